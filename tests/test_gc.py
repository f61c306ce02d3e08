"""pipeline.gc on a local disk and in a bucket (moto's server on 127.0.0.1), with the same
outcomes: it refuses roots the pipeline did not make, touches only names the pipeline writes,
keeps what a held lock may be using, and after a real sweep leaves exactly the kept run, the
sweep and the data."""

import contextlib
import fcntl
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import luigi.configuration
import pytest

from pipeline import cli, gc, lineage, runs, storage
from pipeline.errors import ParameterError
from runner import RUN as RUN_FLAGS
from runner import workspace
from s3server import S3Server

BACKENDS = ["disk", "bucket"]
RUN = "h30-b50-lr0.5-s0-0123abcd"
SWEEP = ["--hidden-sizes", "[16,24]", "--learning-rates", "[0.3,0.6]", "--batch-size", "50", "--iterations", "36",
         "--sampling", "shuffle", "--keep-last", "1"]


@pytest.fixture(scope="module")
def s3server():
    """moto's S3 server, and luigi's [s3] section pointing this process's storage calls at it."""
    config = luigi.configuration.get_config()
    with S3Server() as server:
        config.add_section("s3")
        for key, value in server.settings.items():
            config.set("s3", key, value)
        try:
            yield server
        finally:
            config.remove_section("s3")


class Store:
    """Two roots, data/ and artifacts/, under `base` (a directory or a fresh bucket prefix), and
    a workspace to run `mnist-pipeline` in with the environment that reaches them."""

    def __init__(self, base, workdir, server=None):
        self.base, self.workdir, self.server = str(base), workspace(workdir), server
        self.data, self.artifacts = storage.join(self.base, "data"), storage.join(self.base, "artifacts")
        self.env = {**os.environ, **(server.env if server else {})}
        if server:
            with open(self.workdir / "luigi.cfg", "a") as cfg:
                cfg.write(f"\n[s3]\nendpoint_url = {server.endpoint}\nregion_name = {server.region}\n")

    def put(self, name, content=b"x"):
        storage.write_bytes(storage.join(self.base, name), content)

    def names(self):
        """Every file under base, `/`-separated (local temporaries included)."""
        if storage.is_remote(self.base):
            return sorted(storage.listing(self.base))
        return sorted(Path(d, f).relative_to(self.base).as_posix() for d, _, files in os.walk(self.base) for f in files)

    def gc(self, *args, process=False):
        """`mnist-pipeline gc` on the two roots: (exit code, stdout, stderr); in this process (its
        storage calls reach the bucket through luigi's [s3] section), or in one of its own."""
        args = ["gc", "--data-dir", self.data, "--artifacts-dir", self.artifacts, *args]
        if process:
            done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=self.workdir, env=self.env,
                                  capture_output=True, text=True, timeout=300)
            return done.returncode, done.stdout, done.stderr
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(args)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    if request.param == "disk":
        return Store(tmp_path / "store", tmp_path / "ws")
    server = request.getfixturevalue("s3server")
    return Store(server.url(f"t-{uuid.uuid4().hex[:8]}"), tmp_path / "ws", server)


def marked(store):
    storage.mark(store.data)
    storage.mark(store.artifacts)
    return store


def lease_body(expires, ttl=60.0):
    return json.dumps({"owner": "host:1", "token": uuid.uuid4().hex, "expires": expires, "ttl_seconds": ttl})


# --- roots the pipeline did not make ---

def test_a_root_without_the_marker_is_refused_and_nothing_is_removed(store):
    foreign = ["data/.x.abc.tmp", "data/raw/.y.z.partial/train-images-idx3-ubyte.gz", "data/raw/.y.abcdefgh.partial/f",
               "data/raw/mnist/.MANIFEST.json.abcdefgh.tmp", "data/notes.txt"]
    for name in foreign:
        store.put(name)
    code, out, err = store.gc("--yes", "--keep-runs", "0", "--checkpoints")
    assert code == 2 and out == "", out + err
    (line,) = err.strip().splitlines()
    assert line.startswith("mnist-pipeline: error: ") and store.data in line and ".mnist-pipeline marker" in line
    assert store.names() == sorted(foreign)
    with pytest.raises(ParameterError, match="no .mnist-pipeline marker"):
        gc.survey(store.artifacts, store.data)


def test_in_a_marked_root_only_the_pipelines_own_names_go(store):
    marked(store)
    ours = ["data/raw/synthetic/.MANIFEST.json.k3j4h5ab.tmp", "data/raw/.synthetic.k3j4h5ab.partial/train.gz",
            "data/processed/synthetic/lineage/.images.h5.ab_cd123.tmp",
            "artifacts/synthetic/sweeps/sweep-0123abcd/.summary.csv.zz9yy8xx.tmp", "artifacts/.runs.csv.q1w2e3r4.tmp"]
    theirs = ["data/.x.abc.tmp", "data/raw/.y.z.partial/f", "data/notes/.a.abcdefgh.tmp", "data/raw/.a.b.tmp",
              "artifacts/synthetic/.x.abcdefgh.tmp", "artifacts/.notes.txt.abcdefgh.tmp", "artifacts/mine/model.h5",
              "artifacts/synthetic/sweeps/my-sweep/.summary.csv.abcdefgh.tmp", "artifacts/.locks/.x.abcdefgh.tmp"]
    for name in ours + theirs:
        store.put(name)
    before = store.names()
    items = gc.plan(gc.survey(store.artifacts, store.data))
    assert sorted((storage.relative(i.location, store.base), i.kind) for i in items) == sorted(
        [(name, "temporary") for name in ours if ".partial/" not in name] +
        [("data/raw/.synthetic.k3j4h5ab.partial", "staging")])
    assert store.names() == before  # planning only reads
    code, out, err = store.gc("--yes")
    assert code == 0 and "removed 5 item(s)" in out, out + err
    assert store.names() == sorted(set(before) - set(ours))


def test_an_empty_or_missing_root_is_skipped(store):
    storage.mark(store.data)
    store.put("data/raw/synthetic/.MANIFEST.json.k3j4h5ab.tmp")
    found = gc.survey(store.artifacts, store.data)
    assert found.artifacts is None and any("holds nothing" in note for note in found.notes)
    assert [item.kind for item in gc.plan(found, keep_runs=0, checkpoints=True)] == ["temporary"]
    code, out, err = store.gc("--keep-runs", "-1", "--yes")
    assert code == 2 and "invalid keep_runs=-1" in err and len(store.names()) == 2


# --- locks ---

def test_held_locks_keep_unfinished_runs_and_temporaries_and_stale_locks_go(store):
    marked(store)
    files = [f"artifacts/synthetic/{RUN}/checkpoints/iter-00000012.h5",
             f"artifacts/synthetic/{RUN}/gradient_check.json", f"artifacts/synthetic/{RUN}/.model.h5.abcdefgh.tmp",
             "data/raw/synthetic/.t10k.gz.abcdefgh.tmp"]
    for name in files:
        store.put(name)
    remote = storage.is_remote(store.base)
    if remote:  # lease objects: one live, one that expired an hour ago
        store.put("artifacts/.locks/TrainNetwork_50_synthetic__0123456789", lease_body(time.time() + 3600))
        store.put("artifacts/.locks/EvaluateNetwork_50_synthetic__0123456789", lease_body(time.time() - 3600))
        store.put("artifacts/.locks/not-a-lease", b"mine")
    else:  # lock files: one a process holds, one nobody holds, and exclusive_lock's (kept)
        for name in ("TrainNetwork_50_synthetic__0123456789", "EvaluateNetwork_50_synthetic__0123456789",
                     "runs.csv.lock", "not-a-lease.lock"):
            store.put(f"artifacts/.locks/{name}", b"")
    held = open(storage.join(store.artifacts, ".locks", "TrainNetwork_50_synthetic__0123456789"), "rb") \
        if not remote else None
    if held:
        fcntl.flock(held, fcntl.LOCK_EX)
    try:
        items = gc.plan(gc.survey(store.artifacts, store.data))
        assert sorted((storage.relative(i.location, store.base), i.kind) for i in items) == [
            ("artifacts/.locks/EvaluateNetwork_50_synthetic__0123456789", "lock"),
            ("data/raw/synthetic/.t10k.gz.abcdefgh.tmp", "temporary")]
        assert any("TrainNetwork_50_synthetic__0123456789" in note and "at work" in note for note in items.notes)
        gc.remove(items)
    finally:
        if held:
            held.close()
    left = store.names()
    assert "artifacts/.locks/EvaluateNetwork_50_synthetic__0123456789" not in left
    assert "artifacts/.locks/TrainNetwork_50_synthetic__0123456789" in left
    assert set(files[:3]) <= set(left) and files[3] not in left
    if remote:  # the lease expires: the run is unfinished and nobody works on it
        store.put("artifacts/.locks/TrainNetwork_50_synthetic__0123456789", lease_body(time.time() - 3600))
    items = gc.plan(gc.survey(store.artifacts, store.data))
    assert sorted((storage.relative(i.location, store.base), i.kind) for i in items) == [
        ("artifacts/.locks/TrainNetwork_50_synthetic__0123456789", "lock"),
        (f"artifacts/synthetic/{RUN}", "unfinished-run")]
    assert "1 checkpoint(s)" in next(item for item in items if item.kind == "unfinished-run").reason
    with storage.Lease(storage.join(store.artifacts, ".locks", "CheckGradient_50_synthetic__9876543210"), "test"):
        gc.remove(items)  # a pipeline started after the plan: its run may be this one
    assert set(files[:3]) <= set(store.names())
    gc.remove(items)
    assert [name for name in store.names() if name.startswith("artifacts/")] == (
        ["artifacts/.locks/not-a-lease"] if remote else ["artifacts/.locks/not-a-lease.lock",
                                                         "artifacts/.locks/runs.csv.lock"]) + \
        ["artifacts/.mnist-pipeline"]


def test_an_unfinished_upload_goes_like_a_killed_write(store):
    """A write killed halfway leaves a multipart upload in a bucket and a temporary on a disk:
    both go, and only in the pipeline's directories."""
    marked(store)
    ours, theirs = "data/processed/synthetic/images.h5", "data/backups/images.h5"
    if storage.is_remote(store.base):
        client, bucket = store.server.client(), store.server.bucket
        for name in (ours, theirs):
            key = storage.join(store.base, name)[len(f"s3://{bucket}/"):]
            upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
            client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"\0" * 1000)

        def pending():
            return sorted(name for name, _, _ in storage.unfinished_uploads(store.base))
        kind = "upload"
    else:
        for name in (ours, theirs):
            store.put(name.replace("images.h5", ".images.h5.abcdefgh.tmp"), b"\0" * 1000)

        def pending():
            return [name.replace(".images.h5.abcdefgh.tmp", "images.h5") for name in store.names()
                    if name.endswith(".tmp")]
        kind = "temporary"
    assert pending() == sorted([ours, theirs])
    if kind == "upload":  # started less than min_age ago: it may be live (moto dates every upload 2010)
        started = max(initiated.timestamp() for _, _, initiated in storage.unfinished_uploads(store.base))
        assert gc.plan(gc.survey(store.artifacts, store.data, now=started + 60), min_age=3600) == []
    items = gc.plan(gc.survey(store.artifacts, store.data), min_age=0)
    assert [(storage.relative(item.location, store.base), item.kind) for item in items] == [
        (ours if kind == "upload" else ours.replace("images.h5", ".images.h5.abcdefgh.tmp"), kind)]
    gc.remove(items)
    assert pending() == [theirs]


def test_run_task_ids_name_the_leases_the_tasks_take():
    from pipeline import tasks

    for extra in ({}, {"date": "2026-11-22", "learning_rate": 1e-05, "hidden_size": 7, "seed": 12}):
        params = {"dataset": "synthetic", "hidden_size": 30, "batch_size": 50, "learning_rate": 0.5,
                  "iterations": 60, "sampling": "shuffle", "seed": 4, **extra}
        task = tasks.EvaluateNetwork(**params)
        row = {"dataset": "synthetic", "run_id": task.run_id}
        names = [storage.basename(t.lock().location) for t in (
            tasks.CheckGradient(**params), tasks.TrainNetwork(**params), task)]
        assert gc.run_task_ids(row) == names


# --- a worker's cache ---

def test_the_cache_loses_unused_downloads_and_quiet_working_copies(tmp_path):
    store = marked(Store(tmp_path / "store", tmp_path / "ws"))
    cache = tmp_path / "cache"
    old, new = "a" * 64, "b" * 64
    for digest in (old, new):
        (cache / "objects" / digest).mkdir(parents=True)
        (cache / "objects" / digest / "images.h5").write_bytes(b"\0" * 100)
    (cache / "artifacts-0123456789ab" / "synthetic").mkdir(parents=True)
    (cache / "artifacts-0123456789ab" / "synthetic" / "model.h5").write_bytes(b"\0" * 50)
    (cache / "data-0123456789ab").mkdir()
    (cache / "notes.txt").write_text("mine")
    (cache / "objects" / "not-a-digest").mkdir()
    (cache / "objects" / "not-a-digest" / "f").write_text("mine")
    ten_days_ago = time.time() - 10 * gc.DAY
    for path in [cache / "objects" / old / "images.h5", *(cache / "artifacts-0123456789ab").rglob("*"),
                 cache / "artifacts-0123456789ab"]:
        os.utime(path, (ten_days_ago, ten_days_ago))
    found = gc.survey(store.artifacts, store.data, cache)
    assert [row.name for row in gc.usage(found) if row.kind == "cache"] == ["2 objects", "working copy", "working copy"]
    items = gc.plan(found, cache_days=7)
    assert [(Path(i.location).relative_to(cache).as_posix(), i.kind) for i in items] == [
        (f"objects/{old}/images.h5", "cached-object"), ("artifacts-0123456789ab", "working-copy")]
    assert items[1].bytes == 50
    code, out, err = store.gc("--cache-dir", str(cache), "--cache-days", "0", "--yes")
    assert code == 0 and "removed 3 item(s), 250 B freed" in out, out + err
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()) == [
        "notes.txt", "objects/not-a-digest/f"]
    assert (cache / "data-0123456789ab").is_dir()  # changed just now: a worker may be using it
    with pytest.raises(ParameterError, match="local directory"):
        gc.survey(store.artifacts, store.data, "s3://bucket/cache")


# --- after a real sweep ---

@pytest.mark.slow
def test_after_a_sweep_keep_runs_leaves_the_last_run_the_sweep_and_the_data(store, synthetic_source):
    sweep = subprocess.run([sys.executable, "-m", "luigi", "--module", "pipeline.tasks", "Sweep", "--local-scheduler",
                            "--dataset", "synthetic", "--source-dir", str(synthetic_source), "--local-dirs", "[]",
                            "--mirrors", "[]", "--data-dir", store.data, "--artifacts-dir", store.artifacts, *SWEEP,
                            "--workers", "2"], cwd=store.workdir, env=store.env, capture_output=True, text=True,
                           timeout=300)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    before = store.names()
    order = [row["run_id"] for row in runs.read_runs(store.artifacts)]
    assert len(order) == 4
    kept, gone = order[-1], order[:-1]
    (sweep_id,) = {name.split("/")[3] for name in before if "/sweeps/" in name}

    code, out, err = store.gc("--keep-runs", "1", "--checkpoints")
    assert code == 0 and "a dry run" in out and store.names() == before, err
    assert sum(line.startswith("old-run ") for line in out.splitlines()) == 3

    # a held lock of one old run keeps that run; a held Sweep lock keeps them all
    row = runs.find_run(store.artifacts, gone[0])
    for name in (gc.run_task_ids(row)[1], "Sweep_synthetic_0123456789"):
        lease = storage.Lease(storage.join(store.artifacts, ".locks", name), "test", ttl_seconds=60)
        with lease:
            items = gc.plan(gc.survey(store.artifacts, store.data), keep_runs=1, checkpoints=True)
        old = sorted(item.run_id for item in items if item.kind == "old-run")
        assert old == (sorted(gone[1:]) if name.startswith("Train") else [])
        assert items.notes

    code, out, err = store.gc("--keep-runs", "1", "--checkpoints", "--yes", process=True)
    assert code == 0 and "removed 3 item(s)" in out, err
    run = f"artifacts/synthetic/{kept}"
    report = sorted(name for name in before if name.startswith(f"{run}/report/"))
    assert len(report) == 10
    assert store.names() == sorted([
        "artifacts/.mnist-pipeline", "artifacts/index.html", "artifacts/runs.csv",
        f"{run}/checkpoints/iter-00000036.h5", f"{run}/gradient_check.json", f"{run}/lineage/CheckGradient.json",
        f"{run}/lineage/EvaluateNetwork.json", f"{run}/lineage/TrainNetwork.json",
        f"{run}/lineage/checkpoints/iter-00000036.json", f"{run}/model.h5", *report,
        *(f"artifacts/synthetic/sweeps/{sweep_id}/{name}" for name in (
            "index.html", "lineage/Sweep.json", "summary.csv", "summary.md", "test_accuracy.svg")),
        "data/.mnist-pipeline",
        *(f"data/processed/synthetic/{name}" for name in (
            "images.h5", "labels.h5", "lineage/EncodeLabels.json", "lineage/NormalizeImages.json")),
        *(f"data/raw/synthetic/{name}" for name in (
            "MANIFEST.json", "lineage/DownloadDataset.json", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
            "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"))] +
        (["artifacts/.locks/runs.csv.lock"] if not storage.is_remote(store.base) else []))
    assert [row["run_id"] for row in runs.read_runs(store.artifacts)] == [kept]
    page = storage.read_bytes(storage.join(store.artifacts, "index.html")).decode()
    assert kept in page and not any(run_id in page for run_id in gone)
    assert lineage.problem(storage.join(store.base, run, "lineage", "EvaluateNetwork.json")) is None
    status = subprocess.run([sys.executable, "-m", "pipeline", "status", "--dataset", "synthetic", "--source-dir",
                             str(synthetic_source), "--local-dirs", "[]", "--mirrors", "[]", "--data-dir", store.data,
                             "--artifacts-dir", store.artifacts, "--batch-size", "50", "--iterations", "36",
                             "--sampling", "shuffle", "--hidden-size", kept.split("-")[0][1:],
                             "--learning-rate", kept.split("-lr")[1].split("-")[0]],
                            cwd=store.workdir, env=store.env, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stdout + status.stderr
    again = gc.plan(gc.survey(store.artifacts, store.data), keep_runs=1, checkpoints=True)
    assert again == [] and again.notes == []


@pytest.mark.slow
def test_checkpoints_leaves_a_finished_run_its_last_checkpoint_and_nothing_reruns(store, synthetic_source):
    flags = ["--dataset", "synthetic", "--source-dir", str(synthetic_source), "--local-dirs", "[]", "--mirrors", "[]",
             "--data-dir", store.data, "--artifacts-dir", store.artifacts, *RUN_FLAGS]
    done = subprocess.run([sys.executable, "-m", "luigi", "--module", "pipeline.tasks", "EvaluateNetwork",
                           "--local-scheduler", *flags], cwd=store.workdir, env=store.env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_id,) = [row["run_id"] for row in runs.read_runs(store.artifacts)]
    run = f"artifacts/synthetic/{run_id}"
    saved = [f"iter-{i:08d}" for i in range(0, 61, 12)]
    before = store.names()
    assert [n for n in before if "checkpoints/" in n] == [f"{run}/checkpoints/{c}.h5" for c in saved] + \
        [f"{run}/lineage/checkpoints/{c}.json" for c in saved]
    code, out, err = store.gc("--checkpoints", "--yes")
    assert code == 0 and "removed 5 item(s)" in out, out + err
    spare = {f"{run}/checkpoints/{c}.h5" for c in saved[:-1]} | {f"{run}/lineage/checkpoints/{c}.json"
                                                                  for c in saved[:-1]}
    assert store.names() == sorted(set(before) - spare)
    record = lineage.read_record(storage.join(store.base, run, "lineage", "TrainNetwork.json"))
    assert sorted(record["outputs"]) == ["checkpoints/iter-00000060.h5", "model.h5"]
    assert record["removed_by_gc"][0]["outputs"] == [f"checkpoints/{c}.h5" for c in saved[:-1]]
    status = subprocess.run([sys.executable, "-m", "pipeline", "status", *flags], cwd=store.workdir, env=store.env,
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stdout + status.stderr
    assert gc.plan(gc.survey(store.artifacts, store.data), checkpoints=True) == []
