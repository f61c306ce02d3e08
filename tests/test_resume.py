"""Training survives SIGKILL: the rerun of the same command ends bit-identical to a run never interrupted."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import checkpoint
from pipeline.network import PARAM_NAMES

pytestmark = pytest.mark.slow

# 2400 images, batch 50: 48 iterations an epoch, 31 checkpoints over 1440 iterations.
TRAIN = ["--hidden-size", "40", "--batch-size", "50", "--learning-rate", "0.3", "--iterations", "1440",
         "--seed", "11"]


def luigi_command(source, workdir, *extra):
    return [sys.executable, "-m", "luigi", "--module", "pipeline.tasks", "TrainNetwork", "--local-scheduler",
            "--dataset", "synthetic", "--source-dir", str(source), "--local-dirs", "[]", "--mirrors", "[]",
            "--data-dir", str(workdir / "data"), "--artifacts-dir", str(workdir / "artifacts"), *TRAIN, *extra]


def run_to_end(command, cwd):
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def model_of(workdir):
    (path,) = Path(workdir, "artifacts", "synthetic").glob("*/model.h5")
    return checkpoint.load_checkpoint(path)


def kill_after_checkpoints(command, cwd, count):
    """Start training, SIGKILL it once `count` checkpoints exist, and return the run directory."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            found = list(Path(cwd, "artifacts", "synthetic").glob("*/checkpoints/iter-*.h5"))
            if len(found) >= count:
                break
            assert process.poll() is None, "training ended before it could be killed"
            time.sleep(0.005)
        else:
            pytest.fail("no checkpoints appeared in time")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    (run_dir,) = Path(cwd, "artifacts", "synthetic").glob("*")
    assert not (run_dir / "model.h5").exists(), "the kill came too late: training had finished"
    return run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory, resume_source):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(luigi_command(resume_source, workdir), workdir)
    return model_of(workdir)


def assert_bit_identical(a, b):
    for key in PARAM_NAMES:
        assert a.params[key].tobytes() == b.params[key].tobytes(), key
    assert a.losses.tobytes() == b.losses.tobytes()
    assert a.rng_state == b.rng_state


def test_resume_after_sigkill_is_bit_identical(tmp_path, resume_source, reference):
    run_dir = kill_after_checkpoints(luigi_command(resume_source, tmp_path), tmp_path, count=6)
    left = checkpoint.list_checkpoints(run_dir / "checkpoints")
    for path in left:  # a kill never leaves a half-written checkpoint under a final name
        checkpoint.load_checkpoint(path)
    done = run_to_end(luigi_command(resume_source, tmp_path), tmp_path)
    assert "resuming" in done.stderr
    assert_bit_identical(model_of(tmp_path), reference)


def test_a_damaged_newest_checkpoint_is_passed_over_for_the_one_before(tmp_path, resume_source, reference):
    run_dir = kill_after_checkpoints(luigi_command(resume_source, tmp_path), tmp_path, count=6)
    paths = checkpoint.list_checkpoints(run_dir / "checkpoints")
    newest = paths[-1]
    newest.write_bytes(newest.read_bytes()[:300])  # truncated, as by a full disk
    done = run_to_end(luigi_command(resume_source, tmp_path), tmp_path)
    assert newest.name in done.stderr
    resumed_from = checkpoint.load_checkpoint(paths[-2]).iteration
    assert "resuming" in done.stderr and f"iteration {resumed_from}" in done.stderr
    assert_bit_identical(model_of(tmp_path), reference)
