"""The tests' one way to run the pipeline as a user does: `luigi --module pipeline.tasks` or
`mnist-pipeline` in a subprocess, in a workspace holding the shipped luigi.cfg (so [retcode],
logging and defaults are the ones users get), every data parameter explicit."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py

from pipeline import checkpoint, runs
from pipeline.network import PARAM_NAMES

REPO = Path(__file__).resolve().parent.parent
KILLER = str(Path(__file__).resolve().parent / "killer.py")
# a short run on the generated 600-image set: 12 iterations an epoch, checkpoints 0, 12, ..., 60
RUN = ["--hidden-size", "30", "--batch-size", "50", "--learning-rate", "0.5", "--iterations", "60",
       "--sampling", "shuffle", "--seed", "4"]


def workspace(path):
    """A directory holding the shipped luigi.cfg and nothing else."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "luigi.cfg", path / "luigi.cfg")
    return path


def chain(source, *extra, task="EvaluateNetwork", dataset="synthetic"):
    """luigi's arguments for `task` on the generated dataset in `source`, paths relative to the workspace."""
    return ["--module", "pipeline.tasks", task, "--local-scheduler", "--dataset", dataset,
            "--source-dir", str(source), "--local-dirs", "[]", "--mirrors", "[]", "--data-dir", "data",
            "--artifacts-dir", "artifacts", *RUN, *extra]


def run(args, cwd, tool="luigi", env=None, timeout=300):
    """Run `luigi ARGS` (tool="luigi"), `mnist-pipeline ARGS` ("cli") or the killer ("killer") in cwd."""
    command = {"luigi": [sys.executable, "-m", "luigi"], "cli": [sys.executable, "-m", "pipeline"],
               "killer": [sys.executable, KILLER]}[tool]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def run_dir_of(workdir, prefix="h30-"):
    (run_dir,) = Path(workdir, "artifacts", "synthetic").glob(prefix + "*")
    return run_dir


def h5_datasets(path):
    with h5py.File(path, "r") as f:
        found = {}
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


TIMES = ("created_at", "fetched_at", "finished_at", "seconds", "stages", "command", "digests")


def without_times(value):
    """JSON content without its timestamps, durations and file digests (which cover timestamps),
    for comparing two runs."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIMES and not k.endswith("sha256")}
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
        "weights": {k: model.params[k].tobytes() for k in PARAM_NAMES},
        "losses": model.losses.tobytes(),
        "evaluation": model.evaluation,
        "checkpoints": [p.name for p in checkpoint.list_checkpoints(run_dir / "checkpoints")],
        "report": without_times(json.loads((report_dir / "report.json").read_text())),
        "files": {name: (report_dir / name).read_bytes() for name in (
            "accuracy.csv", "report.md", "accuracy.svg", "loss.svg", "minibatch_loss.svg", "metrics.json",
            "params.json", "dvc.yaml")},
        "runs": [without_times(r) for r in runs.read_runs(str(Path(workdir, "artifacts")))
                 if r["run_id"] == run_dir.name],
    }


def build(*tasks_to_run):
    """Run tasks in this process with the local scheduler: (luigi's status, [(task, message)] of failures)."""
    from pipeline.cli import build as cli_build

    return cli_build(list(tasks_to_run))
