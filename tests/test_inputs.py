"""Every input a user can get wrong on the command line: one line on stderr naming it, the exit
code the README gives, and nothing left behind; and output cut short by a reader (`| head -1`)
ends quietly."""

import gzip
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pipeline import runs
from pipeline.download import peek_train_size
from pipeline.errors import GradientCheckError
from pipeline.gradient_check import check_rows, gradient_check_report
from pipeline.network import TwoLayerNet
from runner import RUN, run, workspace

SLOW = pytest.mark.slow  # about forty `mnist-pipeline` processes, most failing before any work

DATA = ["--dataset", "synthetic", "--local-dirs", "[]", "--mirrors", "[]", "--data-dir", "data",
        "--artifacts-dir", "artifacts"]
BAD_LOCATIONS = ["s3:", "s3:/bkt/a", "s3://B/x", "s3://bkt//x", "s3://bkt/a/../b", "ftp://x"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_source):
    """A workspace with the generated dataset fetched and processed and one finished run (RUN)."""
    workdir = workspace(tmp_path_factory.mktemp("inputs"))
    done = run(["run", *DATA, "--source-dir", str(synthetic_source), *RUN], workdir, tool="cli")
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def _files(workdir):
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))


def _runs_once(workdir):
    """The sweep over seeds [4, 4] scheduled the run of seed 4 once and lists it once."""
    (summary,) = (workdir / "artifacts" / "synthetic" / "sweeps").glob("*/summary.csv")
    lines = summary.read_text().splitlines()[1:]
    assert len(lines) == 1 and "-s4-" in lines[0]
    assert len([r for r in runs.read_runs(str(workdir / "artifacts")) if "-s4-" in r["run_id"]]) == 1


# (command line with SRC for the generated dataset, exit code, what the one error line says, check)
CASES = {
    "date as an ISO week": (["run", "--date", "2026-W47-1"], 2, "invalid date=2026-W47-1: must be a date like", None),
    "date without dashes": (["status", "--date", "20261122"], 2, "invalid date=20261122: must be a date like", None),
    "seed past 2**63 - 1": (["run", "--seed", str(2**63)], 2, f"invalid seed={2**63}: must be a whole number", None),
    "negative seed": (["run", "--seed", "-1"], 2, "invalid seed=-1", None),
    "iterations past 10**9": (["run", "--iterations", str(10**9 + 1)], 2, "<= 1000000000", None),
    "batch past a custom training set": (["run", "--batch-size", "1000"], 2,
                                         "invalid batch_size=1000: must be at most the 600 training images", None),
    "status of a batch past it": (["status", "--batch-size", "1000"], 2, "invalid batch_size=1000", None),
    "sweep with a batch past it": (["sweep", "--batch-sizes", "[50,1000]"], 2, "invalid batch_size=1000", None),
    "iterations below one epoch": (["run", "--batch-size", "100", "--iterations", "5"], 2,
                                   "invalid iterations=5: must be at least one epoch (6 iterations", None),
    "validation leaving no batch": (["run", "--validation-size", "590"], 2, "invalid validation_size=590", None),
    "patience without validation": (["run", "--patience", "2"], 2, "invalid patience=2", None),
    "sweep past max_sweep_runs": (["sweep", "--hidden-sizes", str(list(range(1, 18))), "--seeds", str(list(range(16)))],
                                  2, "the sweep has 17 x 1 x 1 x 16 = 272 runs, more than [training] max_sweep_runs",
                                  None),
    "a repeated sweep value": (["sweep", *RUN, "--seeds", "[4,4]"], 0, None, _runs_once),
    "saturating weight_init_std": (["run", *RUN, "--weight-init-std", "100"], 30,
                                   "weight_init_std=100 saturates the network", None),
    "underflowing weight_init_std": (["run", *RUN, "--weight-init-std", "1e-30"], 30,
                                     "weight_init_std=1e-30 makes the gradient too small to check", None),
    "unknown dataset name": (["run", "--dataset", "../etc"], 2, "invalid dataset='../etc'", None),
    "unknown run id to inspect": (["inspect", "h1-nosuchrun"], 2, "h1-nosuchrun does not exist, as a path or", None),
    "unknown run id to diff": (["diff", "h1-nosuchrun", "h2-nosuchrun"], 2, "h1-nosuchrun does not exist", None),
    "missing model to predict": (["predict", "nosuch.h5", "x.gz"], 20, "nosuch.h5: no such model file", None),
    "unknown predict format": (["predict", "nosuch.h5", "x.gz", "--format", "xml"], 2, "invalid choice: 'xml'", None),
    "negative gc keep-runs": (["gc", "--keep-runs", "-1"], 2, "invalid keep_runs=-1", None),
    **{f"run to {where}": (["run", "--artifacts-dir", where], 2, f"invalid artifacts_dir={where}: must be", None)
       for where in BAD_LOCATIONS},
    **{f"data in {where}": (["status", "--data-dir", where], 2, f"invalid data_dir={where}: must be", None)
       for where in BAD_LOCATIONS[:2]},
    **{f"inspect in {where}": (["inspect", "--artifacts-dir", where], 2, "invalid artifacts_dir=", None)
       for where in BAD_LOCATIONS[2:4]},
    **{f"gc of {where}": (["gc", "--artifacts-dir", where], 2, "invalid artifacts_dir=", None)
       for where in BAD_LOCATIONS[4:]},
}


@SLOW
@pytest.mark.parametrize("case", list(CASES))
def test_a_wrong_input_is_one_line_with_the_readmes_exit_code_and_leaves_nothing(finished, synthetic_source,
                                                                                  tmp_path, case):
    argv, code, message, check = CASES[case]
    workdir = tmp_path / "w"
    shutil.copytree(finished, workdir)
    if argv[0] in ("run", "status", "sweep"):  # the shared data flags go first: a case's own flags win
        argv = [argv[0], *DATA, "--source-dir", str(synthetic_source), *argv[1:]]
    before = _files(workdir)
    done = run(argv, workdir, tool="cli", timeout=120)
    assert done.returncode == code, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line and "mnist-pipeline" in line]
    if message is None:
        assert errors == []
        check(workdir)
        return
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert errors[0].startswith(("mnist-pipeline: error: ", "mnist-pipeline predict: error: "))  # argparse's
    assert _files(workdir) == before  # no run directory, no data, no index row, no metrics


# --- a reader that stops reading ---

def _predict_args(workdir, synthetic_source):
    (run_dir,) = (workdir / "artifacts" / "synthetic").glob("h30-*")
    return ["predict", str(run_dir), str(synthetic_source / "t10k-images-idx3-ubyte.gz")]


COMMANDS = {
    "inspect": lambda workdir, source: ["inspect"],
    "inspect a run": lambda workdir, source: ["inspect", runs.read_runs(str(workdir / "artifacts"))[0]["run_id"]],
    "predict": _predict_args,
    "help": lambda workdir, source: ["--help"],
}


@SLOW
@pytest.mark.parametrize("command", list(COMMANDS))
def test_output_to_a_closed_pipe_ends_quietly_with_0(finished, synthetic_source, command):
    """The reader is gone before the first byte is written: every write meets a broken pipe."""
    args = COMMANDS[command](finished, synthetic_source)
    process = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=finished, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr
    assert stderr == ""


@SLOW
@pytest.mark.parametrize("command", ["inspect", "inspect a run", "predict"])
def test_head_takes_the_first_line_and_the_command_ends_quietly(finished, synthetic_source, command):
    args = COMMANDS[command](finished, synthetic_source)
    script = 'set -o pipefail; "$@" | head -1'
    done = subprocess.run(["bash", "-c", script, "bash", sys.executable, "-m", "pipeline", *args], cwd=finished,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not any(word in done.stderr for word in ("Traceback", "BrokenPipe", "Exception ignored", "error"))
    assert len(done.stdout.splitlines()) == 1


# --- the pieces, in process ---

def _batch(synthetic_source):
    with gzip.open(synthetic_source / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 784) / 255.0
    with gzip.open(synthetic_source / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:], np.uint8)
    rows, rng = check_rows(len(labels), 0)
    return images[rows], labels[rows], rng


@pytest.mark.parametrize("std, blamed", [(0.01, None), (1.0, None), (10.0, "saturates"), (100.0, "saturates"),
                                         (1e-8, "too small"), (1e-30, "too small")])
def test_a_failed_check_blames_the_weights_only_when_they_are_at_fault(synthetic_source, std, blamed):
    x, t, rng = _batch(synthetic_source)
    check = dict(n_classes=10, hidden_size=30, weight_init_std=std, seed=0)
    if blamed is None:
        assert gradient_check_report(x, t, rng, **check)["passed"]
        return
    with pytest.raises(GradientCheckError, match=f"weight_init_std={std:g} .*{blamed}.*such as 0.01"):
        gradient_check_report(x, t, rng, **check)


def test_a_wrong_backprop_still_fails_as_a_disagreement(synthetic_source, monkeypatch):
    x, t, rng = _batch(synthetic_source)
    right = TwoLayerNet.gradient
    monkeypatch.setattr(TwoLayerNet, "gradient", lambda self, x, t: {k: 1.5 * g for k, g in right(self, x, t).items()})
    result = gradient_check_report(x, t, rng, n_classes=10, hidden_size=30, weight_init_std=0.01, seed=0)
    assert not result["passed"] and result["worst_relative_error"] > 0.1
    assert set(result) >= {"passed", "tolerance", "worst_relative_error", "method", "batch_size", "hidden_size",
                           "seed", "parameters"}


def test_the_training_set_size_is_read_from_the_labels_header_alone(tmp_path, synthetic_source):
    assert peek_train_size(synthetic_source) == 600
    plain = tmp_path / "plain"
    plain.mkdir()
    header = (0x801).to_bytes(4, "big") + (70000).to_bytes(4, "big")
    (plain / "train-labels-idx1-ubyte").write_bytes(header)  # no labels after it: only the header is read
    assert peek_train_size(plain) == 70000
    for content in (b"", b"\x1f\x8b\x08garbage", header[:6], (0x803).to_bytes(4, "big") + header[4:]):
        (plain / "train-labels-idx1-ubyte").write_bytes(content)
        assert peek_train_size(plain) is None
    assert peek_train_size(tmp_path / "absent") is None
