"""Share-nothing workers: data and artifacts in an S3-compatible bucket (moto's server on
127.0.0.1), each worker in a working directory of its own, luigid handing out the tasks."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline import checkpoint, runs, storage
from pipeline.network import PARAM_NAMES
from runner import RUN, REPO, run, workspace
from s3server import FaultyProxy, S3Server
from test_scale_out import SWEEP

pytestmark = pytest.mark.slow


@pytest.fixture
def s3():
    with S3Server() as server:
        yield server


def worker_dir(path, s3, endpoint=None):
    """A worker's own directory: the shipped luigi.cfg, and [s3] pointing at the test's server."""
    workspace(path)
    endpoint = endpoint or s3.endpoint
    config = (path / "luigi.cfg").read_text().replace(  # idle workers look again sooner than luigi's 1 + 5 s
        "[worker]\n", "[worker]\nwait_interval = 0.2\nwait_jitter = 0.3\n")
    (path / "luigi.cfg").write_text(config + f"\n[s3]\nendpoint_url = {endpoint}\nregion_name = {s3.region}\n")
    return path


def environment(s3):
    return {**os.environ, **s3.env}


def bucket_flags(s3, source):
    return ["--dataset", "synthetic", "--source-dir", str(source), "--local-dirs", "[]", "--mirrors", "[]",
            "--data-dir", f"s3://{s3.bucket}/data", "--artifacts-dir", f"s3://{s3.bucket}/artifacts",
            "--lease-seconds", "4"]


def local_flags(source):
    return ["--dataset", "synthetic", "--source-dir", str(source), "--local-dirs", "[]", "--mirrors", "[]",
            "--data-dir", "data", "--artifacts-dir", "artifacts"]


def weights_in_bucket(s3, prefix):
    """{run_id: bytes of its final weights} of the models under s3://bucket/prefix."""
    found = {}
    names = storage.listing(f"s3://{s3.bucket}/{prefix}", settings=s3.settings)
    for name in names:
        if name.endswith("/model.h5"):
            folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"weights-{s3.bucket}" / name.replace("/", "-")
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.write_bytes(storage.read_bytes(f"s3://{s3.bucket}/{prefix}/{name}", settings=s3.settings))
            model = checkpoint.load_checkpoint(folder)
            found[name.split("/")[-2]] = b"".join(model.params[k].tobytes() for k in PARAM_NAMES)
    return found


def weights_on_disk(artifacts):
    return {p.parent.name: b"".join(checkpoint.load_checkpoint(p).params[k].tobytes() for k in PARAM_NAMES)
            for p in Path(artifacts).glob("synthetic/*/model.h5")}


def test_three_share_nothing_workers_run_a_sweep_through_the_bucket(tmp_path, s3, synthetic_source, luigid,
                                                                     monkeypatch):
    monkeypatch.setattr(storage, "s3_settings", lambda config=None: s3.settings)
    port, url = luigid
    reference = workspace(tmp_path / "local")
    done = run(["--module", "pipeline.tasks", "Sweep", "--local-scheduler", *local_flags(synthetic_source), *SWEEP],
               reference)
    assert done.returncode == 0, done.stderr[-2000:]

    command = [str(Path(sys.executable).parent / "mnist-pipeline-luigi"), "--module", "pipeline.tasks", "Sweep",
               "--no-lock", "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port),
               *bucket_flags(s3, synthetic_source), *SWEEP]
    workers = [subprocess.Popen(command, cwd=worker_dir(tmp_path / f"worker{k}", s3), env=environment(s3),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(3)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], "\n".join(log[-3000:] for log in logs)
    assert "\n".join(logs).count("training from iteration 0") == 4
    done = json.loads(urllib.request.urlopen(url + "/api/task_list?data=" + urllib.request.quote(
        json.dumps({"status": "DONE"}))).read())["response"]
    families = [task["name"] for task in done.values()]
    assert (families.count("TrainNetwork"), families.count("EvaluateNetwork"), families.count("Sweep")) == (4, 4, 1)

    names = storage.listing(f"s3://{s3.bucket}", settings=s3.settings)
    assert not [n for n in names if n.endswith((".tmp", ".partial")) or "/.locks/" in n]  # leases released
    for run_id in weights_on_disk(reference / "artifacts"):
        for part in ("model.h5", "report/report.json", "report/index.html", "lineage/EvaluateNetwork.json",
                     "checkpoints/iter-00000036.h5"):
            assert f"artifacts/synthetic/{run_id}/{part}" in names
    assert [n for n in names if n.startswith("artifacts/synthetic/sweeps/") and n.endswith("summary.csv")]
    rows = runs.read_runs(f"s3://{s3.bucket}/artifacts")
    assert len(rows) == 4 and len({r["run_id"] for r in rows}) == 4
    for run_id in weights_on_disk(reference / "artifacts"):  # made by whichever worker: nothing missing
        full = json.loads(storage.read_bytes(f"s3://{s3.bucket}/artifacts/synthetic/{run_id}/report/report.json",
                                             settings=s3.settings))
        assert full["gradient_check"]["passed"] and len(full["checkpoints"]) == 4
        assert [s["task"] for s in full["stages"]] == ["DownloadDataset", "NormalizeImages", "EncodeLabels",
                                                       "CheckGradient", "TrainNetwork", "EvaluateNetwork"]
        assert all(s["seconds"] is not None for s in full["stages"])
    page = storage.read_bytes(f"s3://{s3.bucket}/artifacts/index.html", settings=s3.settings).decode()
    assert all(row["run_id"] in page for row in rows) and page.count('"curves":{"test_accuracy":[[') == 4
    assert page.count('<a href="synthetic/sweeps/sweep-') == 1  # the sweep, listed once its files are there
    assert weights_in_bucket(s3, "artifacts") == weights_on_disk(reference / "artifacts")
    for k in range(3):  # each worker kept its own copies, nothing else, in its own directory
        assert not (tmp_path / f"worker{k}" / "artifacts").exists()


def test_a_training_killed_on_one_worker_is_resumed_by_another_bit_identical(tmp_path, s3, synthetic_source):
    reference = workspace(tmp_path / "local")
    args = ["--module", "pipeline.tasks", "TrainNetwork", "--local-scheduler"]
    done = run([*args, *local_flags(synthetic_source), *RUN], reference)
    assert done.returncode == 0, done.stderr[-2000:]

    first = worker_dir(tmp_path / "first", s3)
    process = subprocess.Popen([sys.executable, "-m", "luigi", *args, *bucket_flags(s3, synthetic_source), *RUN],
                               cwd=first, env=environment(s3), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not [n for n in storage.listing(f"s3://{s3.bucket}/artifacts", settings=s3.settings)
               if n.endswith("iter-00000012.h5")]:
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint reached the bucket"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()

    second = worker_dir(tmp_path / "second", s3)
    done = run([*args, *bucket_flags(s3, synthetic_source), *RUN], second, env=environment(s3))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming training from iteration" in done.stderr
    assert weights_in_bucket(s3, "artifacts") == weights_on_disk(reference / "artifacts")

    (run_id,) = weights_on_disk(reference / "artifacts")
    run_dir = f"s3://{s3.bucket}/artifacts/synthetic/{run_id}"
    shown = run(["inspect", run_dir], second, tool="cli", env=environment(s3))
    assert shown.returncode == 1 and "has no report to trust" in shown.stderr  # TrainNetwork alone ran
    assert "iter-00000060.h5" in shown.stdout and "hidden_size: 30" in shown.stdout
    predicted = run(["predict", "--summary", run_dir, str(synthetic_source / "t10k-images-idx3-ubyte.gz")], second,
                    tool="cli", env=environment(s3))
    assert predicted.returncode == 0 and "predicted 200 images" in predicted.stderr, predicted.stderr


def test_throttling_and_resets_of_the_store_change_nothing(tmp_path, s3, synthetic_source):
    reference = workspace(tmp_path / "local")
    args = ["--module", "pipeline.tasks", "EvaluateNetwork", "--local-scheduler"]
    done = run([*args, *local_flags(synthetic_source), *RUN], reference)
    assert done.returncode == 0, done.stderr[-2000:]
    with FaultyProxy(s3.endpoint, slowdown=0.1, reset=0.05) as proxy:
        worker = worker_dir(tmp_path / "worker", s3, endpoint=proxy.endpoint)
        done = run([*args, *bucket_flags(s3, synthetic_source), *RUN], worker,
                   env={**environment(s3), "AWS_ENDPOINT_URL": proxy.endpoint})
        assert done.returncode == 0, done.stderr[-3000:]
        assert sum(proxy.counts.values()) > 50
    assert weights_in_bucket(s3, "artifacts") == weights_on_disk(reference / "artifacts")
    names = storage.listing(f"s3://{s3.bucket}", settings=s3.settings)
    assert not [n for n in names if n.split("/")[-1].startswith(".") and n.split("/")[-1] != storage.MARKER]


def test_two_uncoordinated_runs_of_one_training_train_it_once(tmp_path, s3, synthetic_source):
    args = [sys.executable, "-m", "luigi", "--module", "pipeline.tasks", "TrainNetwork", "--local-scheduler", "--no-lock",
            *bucket_flags(s3, synthetic_source), *RUN]
    processes = [subprocess.Popen(args, cwd=worker_dir(tmp_path / f"host{k}", s3), env=environment(s3),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "\n".join(logs).count("training from iteration 0") == 1
    assert len(weights_in_bucket(s3, "artifacts")) == 1


def test_without_boto3_an_s3_location_says_what_to_install(tmp_path):
    workspace(tmp_path)
    code = ("import sys; sys.modules['boto3'] = None; from pipeline.cli import main; "
            "sys.exit(main(['run', '--artifacts-dir', 's3://bucket/art']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'mnist-pipeline[s3]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert REPO.exists()
