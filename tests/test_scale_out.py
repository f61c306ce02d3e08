"""Sweeps on Luigi's central scheduler with several workers."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from runner import workspace

pytestmark = pytest.mark.slow

SWEEP = ["--hidden-sizes", "[16,24]", "--learning-rates", "[0.3,0.6]", "--batch-size", "50",
         "--iterations", "36", "--sampling", "shuffle"]


def chain_flags(source, workdir):
    return ["--dataset", "synthetic", "--source-dir", str(source), "--local-dirs", "[]", "--mirrors", "[]",
            "--data-dir", str(workdir / "data"), "--artifacts-dir", str(workdir / "artifacts")]


def luigi(*args):
    return [sys.executable, "-m", "luigi", "--module", "pipeline.tasks", *args]


@pytest.mark.parametrize("route", ["luigi", "cli"])
def test_three_workers_on_a_central_scheduler_train_each_run_once_and_all_exit_0(tmp_path, synthetic_source, luigid,
                                                                                  route):
    """Three workers (--no-lock, as on three hosts) with the shipped luigi.cfg and its [retcode]:
    plain luigi would exit 40 or 60 in the workers that met a task another one ran."""
    port, url = luigid
    workdir = workspace(tmp_path / "w")
    scheduler = ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)]
    if route == "luigi":
        command = [str(Path(sys.executable).parent / "mnist-pipeline-luigi"), "--module", "pipeline.tasks", "Sweep",
                   "--no-lock", *chain_flags(synthetic_source, workdir), *SWEEP, *scheduler]
    else:
        command = [sys.executable, "-m", "pipeline", "sweep", "--no-lock", *chain_flags(synthetic_source, workdir),
                   *SWEEP, *scheduler]
    workers = [subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(3)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], "\n".join(log[-2000:] for log in logs)

    run_dirs = sorted(Path(workdir, "artifacts", "synthetic").glob("h*"))
    assert len(run_dirs) == 4
    starts = "\n".join(logs).count("training from iteration 0")
    assert starts == 4, f"{starts} training starts for 4 runs"
    for run_dir in run_dirs:
        assert (run_dir / "report" / "report.json").exists() and (run_dir / "model.h5").exists()
    (summary,) = Path(workdir, "artifacts", "synthetic", "sweeps").glob("*/summary.csv")
    assert len(summary.read_text().splitlines()) == 5
    assert (summary.parent / "index.html").exists() and (summary.parent / "test_accuracy.svg").exists()

    done = json.loads(urllib.request.urlopen(url + "/api/task_list?data=" + urllib.request.quote(
        json.dumps({"status": "DONE"}))).read())["response"]
    families = [task["name"] for task in done.values()]
    assert families.count("EvaluateNetwork") == 4 and families.count("TrainNetwork") == 4
    assert families.count("Sweep") == 1 and families.count("NormalizeImages") == 1
