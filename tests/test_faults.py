"""Fault injection through the whole chain: kills, misbehaving mirrors, damaged files, bad
parameters, concurrent runs, full and read-only disks, and the exit codes a scheduler sees."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import luigi
import numpy as np
import pytest
from luigi.execution_summary import LuigiStatusCode

from fakedata import checksums_for, make_idx_dataset
from pipeline import checkpoint, report, tasks
from pipeline.network import PARAM_NAMES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
KILLER = str(Path(__file__).resolve().parent / "killer.py")
RUN = ["--hidden-size", "30", "--batch-size", "50", "--learning-rate", "0.5", "--iterations", "60",
       "--sampling", "shuffle", "--seed", "4"]


def chain(source, *extra, task="EvaluateNetwork"):
    return ["--module", "pipeline.tasks", task, "--local-scheduler", "--dataset", "synthetic",
            "--source-dir", str(source), "--local-dirs", "[]", "--mirrors", "[]", "--data-dir", "data",
            "--artifacts-dir", "artifacts", *RUN, *extra]


def workspace(path):
    """A directory with the shipped luigi.cfg (for its [retcode]) and nothing else."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "luigi.cfg", path / "luigi.cfg")
    return path


def luigi_run(args, cwd):
    return subprocess.run([sys.executable, "-m", "luigi", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def killed_run(target, count, when, args, cwd):
    return subprocess.run([sys.executable, KILLER, target, str(count), when, "--", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def run_dir_of(workdir):
    (run_dir,) = Path(workdir, "artifacts", "synthetic").glob("h30-*")
    return run_dir


def h5_datasets(path):
    with h5py.File(path, "r") as f:
        found = {}
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def without_times(value):
    """JSON content with its timestamps dropped, for comparing two runs."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in ("created_at", "fetched_at", "finished_at")}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def outputs(workdir):
    """Everything the chain wrote, in a form two undisturbed runs agree on exactly."""
    run_dir = run_dir_of(workdir)
    data = Path(workdir, "data")
    model = checkpoint.load_checkpoint(run_dir / "model.h5")
    report_dir = run_dir / "report"
    return {
        "manifest": without_times(json.loads((data / "raw" / "synthetic" / "MANIFEST.json").read_text())),
        "images": {k: v.tobytes() for k, v in h5_datasets(data / "processed" / "synthetic" / "images.h5").items()},
        "labels": {k: v.tobytes() for k, v in h5_datasets(data / "processed" / "synthetic" / "labels.h5").items()},
        "gradient_check": json.loads((run_dir / "gradient_check.json").read_text()),
        "params.json": (run_dir / "params.json").read_text(),
        "weights": {k: model.params[k].tobytes() for k in PARAM_NAMES},
        "losses": model.losses.tobytes(),
        "checkpoints": [p.name for p in checkpoint.list_checkpoints(run_dir / "checkpoints")],
        "metrics": without_times(json.loads((report_dir / "metrics.json").read_text())),
        "files": {name: (report_dir / name).read_bytes() for name in ("accuracy.csv", "report.md", "accuracy.png",
                                                                      "loss.png")},
        "runs": [without_times(r) for r in report.read_runs(Path(workdir, "artifacts", "runs.csv"))],
    }


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, synthetic_source):
    workdir = workspace(tmp_path_factory.mktemp("undisturbed"))
    done = luigi_run(chain(synthetic_source), workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return outputs(workdir)


# 1. SIGKILL during each stage, then the same command again --------------------------------

KILLS = {
    "download": ("pipeline.download:_verify", 3, "after", lambda w: Path(w, "data/raw/synthetic/MANIFEST.json")),
    "normalize": ("pipeline.processed:write_images", 1, "after",
                  lambda w: Path(w, "data/processed/synthetic/images.h5")),
    "encode": ("pipeline.processed:write_labels", 1, "after", lambda w: Path(w, "data/processed/synthetic/labels.h5")),
    "gradient check": ("pipeline.gradcheck:check_gradient", 1, "after",
                       lambda w: next(Path(w, "artifacts/synthetic").glob("*/gradient_check.json"), None)),
    "training": ("pipeline.checkpoint:save_checkpoint", 3, "after",
                 lambda w: next(Path(w, "artifacts/synthetic").glob("*/model.h5"), None)),
    "checkpoint write": ("pipeline.checkpoint:_write_layout", 3, "after",  # inside the third file, not closed
                         lambda w: next(Path(w, "artifacts/synthetic").glob("*/model.h5"), None)),
    "evaluation": ("pipeline.report:write_atomically", 3, "after",
                   lambda w: next(Path(w, "artifacts/synthetic").glob("*/report/metrics.json"), None)),
}


@pytest.mark.parametrize("stage", list(KILLS))
def test_sigkill_during_a_stage_then_rerun_gives_the_undisturbed_outputs(stage, tmp_path, synthetic_source,
                                                                         undisturbed):
    target, count, when, marker = KILLS[stage]
    workdir = workspace(tmp_path / "w")
    killed = killed_run(target, count, when, chain(synthetic_source), workdir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    output = marker(workdir)
    assert output is None or not output.exists(), f"{stage}: marked complete by a killed run"

    rerun = luigi_run(chain(synthetic_source), workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert outputs(workdir) == undisturbed
    leftovers = [p for p in workdir.rglob("*") if p.name.endswith((".tmp", ".partial", "-luigi-tmp"))]
    assert leftovers == []  # the rerun cleared what the killed run left half-written


# 2. A misbehaving mirror, through DownloadDataset -------------------------------------------

@pytest.mark.parametrize("mode", ["hang", "truncate", "html", "404", "corrupt", "500"])
def test_a_misbehaving_mirror_ends_in_a_good_copy_or_a_clear_error(mode, tmp_path, mirrors):
    published = tmp_path / "published"
    hashes = make_idx_dataset(published, n_train=120, n_test=30)
    bad, good = mirrors(published, mode), mirrors(published, "ok")

    def download(urls, data_dir):
        task = tasks.DownloadDataset(dataset="mnist", data_dir=str(data_dir), local_dirs=[], mirrors=urls,
                                     checksums=checksums_for(hashes), timeout=0.5, retries=2)
        return tasks.build([task])

    status, _ = download([bad.url, good.url], tmp_path / "one")
    assert status == LuigiStatusCode.SUCCESS
    raw = tmp_path / "one" / "raw" / "mnist"
    for name, h in hashes.items():
        assert (raw / name).read_bytes() == (published / name).read_bytes()

    status, failures = download([bad.url], tmp_path / "two")
    assert status == LuigiStatusCode.FAILED
    assert "could not get a verified" in failures[0][1] and bad.url in failures[0][1]
    assert not (tmp_path / "two" / "raw" / "mnist").exists()


# 3. Damaged files already on disk ---------------------------------------------------------

@pytest.fixture
def trained(tmp_path, synthetic_source):
    workdir = workspace(tmp_path / "w")
    done = luigi_run(chain(synthetic_source), workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def test_a_truncated_processed_file_is_named_with_the_command_that_rebuilds_it(trained, synthetic_source):
    images = Path(trained, "data/processed/synthetic/images.h5")
    images.write_bytes(images.read_bytes()[:4096])
    done = luigi_run(chain(synthetic_source, "--seed", "5"), trained)  # a new run reads images.h5
    assert done.returncode == 30
    assert f"{Path('data/processed/synthetic/images.h5')} is damaged or not HDF5" in done.stderr
    assert "delete it and rerun (luigi --module pipeline.tasks NormalizeImages" in done.stderr
    assert "Traceback" not in done.stderr
    assert Path(trained, "data/processed/synthetic/labels.h5").exists()  # nothing else was deleted
    assert (run_dir_of(trained) / "model.h5").exists()


def test_a_checkpoint_that_is_not_hdf5_is_named_when_evaluating(trained, synthetic_source):
    run_dir = run_dir_of(trained)
    shutil.rmtree(run_dir / "report")
    damaged = checkpoint.checkpoint_path(run_dir / "checkpoints", 24)
    damaged.write_text("this is not HDF5")
    done = luigi_run(chain(synthetic_source), trained)
    assert done.returncode == 30
    assert "iter-00000024.h5 is not a readable HDF5 checkpoint" in done.stderr
    assert "delete it and rerun the training command" in done.stderr
    assert len(checkpoint.list_checkpoints(run_dir / "checkpoints")) == 6


def test_a_raw_file_that_disagrees_with_its_manifest_is_refused(trained, synthetic_source, tmp_path):
    other = tmp_path / "other"
    make_idx_dataset(other, n_train=600, n_test=200, seed=99)
    raw = Path(trained, "data/raw/synthetic")
    shutil.copy(other / "t10k-labels-idx1-ubyte.gz", raw / "t10k-labels-idx1-ubyte.gz")
    shutil.rmtree(Path(trained, "data/processed"))
    done = luigi_run(chain(synthetic_source, "--seed", "5"), trained)  # a new run needs the processed files
    assert done.returncode == 30
    assert "t10k-labels-idx1-ubyte.gz does not match" in done.stderr and "MANIFEST.json" in done.stderr
    assert f"delete {Path('data/raw/synthetic')} and rerun" in done.stderr
    assert not Path(trained, "data/processed/synthetic/labels.h5").exists()
    assert (raw / "train-images-idx3-ubyte.gz").exists()


# 4. Bad parameters, from the command line and from luigi.cfg ------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--hidden-size", "-3"], "invalid hidden_size=-3"),
    (["--batch-size", "0"], "invalid batch_size=0"),
    (["--learning-rate", "fast"], "'fast' is not a number"),
    (["--iterations", "ten"], "'ten' is not a whole number"),
    (["--dtype", "float16"], "invalid dtype='float16'"),
    (["--dataset", "fashion-mnist", "--iterations", "100"], "at least one epoch (600 iterations"),
    (["--dataset", "mnist", "--batch-size", "70000"], "at most the 60000 training images"),
    (["--dataset", "../../etc"], "invalid dataset='../../etc'"),
])
def test_a_bad_parameter_is_a_one_line_error_before_any_file(flags, message, tmp_path):
    workdir = workspace(tmp_path / "w")
    done = luigi_run(["--module", "pipeline.tasks", "EvaluateNetwork", "--local-scheduler", *flags], workdir)
    assert done.returncode == 70
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["luigi.cfg"]


@pytest.mark.parametrize("setting, message", [
    ("[training]\nhidden_size = abc\n", "'abc' is not a whole number"),
    ("[training]\nlearning_rate = -0.5\n", "invalid learning_rate=-0.5"),
    ("[EvaluateNetwork]\ndataset = ../outside\n", "invalid dataset='../outside'"),
])
def test_a_bad_value_in_luigi_cfg_is_a_one_line_error(setting, message, tmp_path):
    workdir = workspace(tmp_path / "w")
    (tmp_path / "override.cfg").write_text(setting)  # read after ./luigi.cfg, so it wins
    done = subprocess.run([sys.executable, "-m", "luigi", "--module", "pipeline.tasks", "EvaluateNetwork",
                           "--local-scheduler"], cwd=workdir, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(tmp_path / "override.cfg")})
    assert done.returncode == 70 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["luigi.cfg"]


# 5. Two processes start the same run at once ----------------------------------------------

def test_two_concurrent_launches_of_one_run_train_it_once(tmp_path, synthetic_source, undisturbed):
    """Two launches of the same run with different command lines (so luigi's pid lock, which
    compares command lines, lets both in): the run lock makes the second wait, then skip."""
    workdir = workspace(tmp_path / "w")
    first = [sys.executable, "-m", "luigi", *chain(synthetic_source)]
    second = [*first, "--workers", "1"]
    processes = [subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for command in (first, second)]
    logs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], logs
    assert "\n".join(logs).count("training from iteration 0") == 1
    assert outputs(workdir) == undisturbed  # one row in runs.csv, checkpoints and report intact


def test_an_identical_second_launch_is_turned_away_by_luigis_lock_or_finds_the_run_done(tmp_path, synthetic_source,
                                                                                       undisturbed):
    workdir = workspace(tmp_path / "w")
    command = [sys.executable, "-m", "luigi", *chain(synthetic_source)]
    processes = [subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in processes]
    codes = sorted(p.returncode for p in processes)
    assert codes in ([0, 0], [0, 40]), logs  # 40: [retcode] already_running
    assert "\n".join(logs).count("training from iteration 0") == 1
    assert outputs(workdir) == undisturbed


# 6. Full and read-only disks --------------------------------------------------------------

def mount_tmpfs(path, size):
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")


def test_a_full_disk_fails_clearly_and_keeps_what_was_written(tmp_path, synthetic_source):
    workdir = workspace(tmp_path / "w")
    artifacts = workdir / "artifacts"
    mount_tmpfs(artifacts, "600k")
    try:
        done = luigi_run(chain(synthetic_source, "--hidden-size", "60"), workdir)
        assert done.returncode == 30
        assert "No space left on device; free some space or fix the permissions and rerun" in done.stderr
        assert "Traceback" not in done.stderr
        (run_dir,) = (artifacts / "synthetic").glob("h60-*")
        saved = checkpoint.list_checkpoints(run_dir / "checkpoints")
        assert saved, "some checkpoints should fit"
        for path in saved:
            checkpoint.load_checkpoint(path)  # every checkpoint that exists is whole
        assert not (run_dir / "model.h5").exists()
        assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(artifacts)])


def test_a_read_only_artifacts_directory_fails_clearly_and_keeps_earlier_runs(trained, synthetic_source):
    runs_dir = Path(trained, "artifacts", "synthetic")
    before = outputs(trained)
    locked = subprocess.run(["chattr", "+i", str(runs_dir)], capture_output=True)
    if locked.returncode:
        pytest.skip("chattr +i is not available here")
    try:
        done = luigi_run(chain(synthetic_source, "--seed", "8"), trained)
        assert done.returncode == 30
        assert "cannot write" in done.stderr and "Operation not permitted; free some space or fix" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        subprocess.run(["chattr", "-i", str(runs_dir)])
    assert outputs(trained) == before


# 7. Exit codes a scheduler sees ----------------------------------------------------------

def test_exit_codes_follow_the_shipped_retcode_section(tmp_path, synthetic_source):
    workdir = workspace(tmp_path / "w")
    first = luigi_run(chain(synthetic_source), workdir)
    assert first.returncode == 0
    again = luigi_run(chain(synthetic_source), workdir)
    assert again.returncode == 0 and "complete ones were encountered" in again.stderr
    assert "ran successfully" not in again.stderr  # already complete: no work at all
    empty = workdir / "empty"
    empty.mkdir()
    failed = luigi_run(chain(empty, "--seed", "9", "--data-dir", "other-data"), workdir)
    assert failed.returncode == 30  # a task failed
    bad = luigi_run(chain(synthetic_source, "--hidden-size", "0"), workdir)
    assert bad.returncode == 70  # refused parameters (an exception before scheduling)


# Security --------------------------------------------------------------------------------

def test_no_pickle_anywhere_in_the_package():
    offenders = [f"{path.name}:{number}" for path in (REPO / "pipeline").glob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if "pickle" in line or "allow_pickle=True" in line.replace(" ", "")]
    assert offenders == []
