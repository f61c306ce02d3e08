"""mnist-pipeline-luigi's own checks: a Range task's refused parameters are one-line errors with
the README's code, and a luigi without an internal it relies on says so in one line."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import luigi.execution_summary
import luigi.retcodes
import pytest

from pipeline import retcodes
from pipeline.errors import PipelineError
from runner import run, workspace

ENTRY = str(Path(sys.executable).with_name("mnist-pipeline-luigi"))
RANGE = ["--module", "pipeline.tasks", "RangeDailyBase", "--of", "EvaluateNetwork", "--param-name", "date",
         "--local-scheduler"]
REFUSED = [
    (["--start", "2026-11-05", "--stop", "2026-11-01", "--of-params", '{"dataset": "fashion-mnist"}'],
     "invalid range: start 2026-11-05 is after stop 2026-11-01", "Can't have start > stop"),
    (["--start", "2026-11-01", "--stop", "2026-11-03", "--of-params", '{"dataset": "fashion-mnist", "hidden_size": 0}'],
     "invalid hidden_size=0: must be a whole number >= 1", "invalid hidden_size=0: must be a whole number >= 1"),
    (["--start", "2026-11-01", "--stop", "2026-11-03", "--of-params", '{"dataset": "../x"}'],
     "invalid dataset='../x'", "invalid dataset='../x'"),
]


@pytest.mark.slow  # subprocesses: about 1 s each
@pytest.mark.parametrize("flags, message, _", REFUSED)
def test_mnist_pipeline_luigi_refuses_a_bad_range_with_70_in_one_line(tmp_path, flags, message, _):
    workdir = workspace(tmp_path / "w")
    done = subprocess.run([ENTRY, *RANGE, *flags], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 70, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR: " in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["luigi.cfg"]


@pytest.mark.slow
@pytest.mark.parametrize("flags, _, message", REFUSED)
def test_plain_luigi_refuses_a_bad_range_while_scheduling_with_50_in_one_line(tmp_path, flags, _, message):
    """luigi's own command line checks a range's dates and --of-params only while scheduling:
    its scheduling_error code, and the reason without luigi's traceback."""
    workdir = workspace(tmp_path / "w")
    done = run([*RANGE, *flags], workdir)
    assert done.returncode == 50, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_missing_luigi_internal_is_named_in_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.delattr(luigi.execution_summary, "_summary_dict")
    with pytest.raises(PipelineError, match=r"has no luigi\.execution_summary\._summary_dict, which "
                                            r"mnist-pipeline-luigi needs: install a tested luigi \(luigi>="):
        retcodes.luigi_internal(luigi.execution_summary, "_summary_dict")
    with caplog.at_level(logging.ERROR, logger="luigi-interface"):
        code = retcodes.run(["--module", "toytasks", "ToyTask", "--out-dir", str(tmp_path), "--sleep", "0",
                             "--local-scheduler", "--no-lock"])
    assert code == luigi.retcodes.retcode().unhandled_exception
    assert "_summary_dict" in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "f.done").exists()  # refused before running anything


def test_the_tested_luigi_range_is_the_one_pyproject_declares():
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert f'"{retcodes.TESTED}"' in text


def test_the_luigi_route_runs_a_toy_job_to_0_with_the_local_scheduler(tmp_path):
    code = retcodes.run(["--module", "toytasks", "ToyTask", "--out-dir", str(tmp_path), "--sleep", "0",
                         "--local-scheduler", "--no-lock"])
    assert code == 0 and sorted(p.name for p in tmp_path.glob("*.done")) == [f"{n}.done" for n in "abcdef"]
    assert json.loads(json.dumps(retcodes.graph_states(None, "x"))) == {}  # no luigid: nothing elsewhere


@pytest.mark.parametrize("argv, message", [
    (["--module", "toytasks", "NoSuchTask"], "refused: TaskClassNotFoundException: No task NoSuchTask."),
    (["--module", "no_such_module_here", "ToyTask"], "refused: ModuleNotFoundError: No module named "
                                                     "'no_such_module_here'"),
])
def test_an_unknown_task_or_module_is_refused_in_one_line(argv, message, caplog):
    with caplog.at_level(logging.ERROR, logger="luigi-interface"):
        code = retcodes.run([*argv, "--local-scheduler", "--no-lock"])
    assert code == luigi.retcodes.retcode().unhandled_exception
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR][0].startswith(message)
    assert "Traceback" not in caplog.text
