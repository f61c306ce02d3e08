"""Three share-nothing workers on Luigi's central scheduler run one job (tests/toytasks.py) under
the repo's [retcode] values: each exits 0 when the whole job is complete, whoever ran which
task, and a task's failure is a non-zero exit (30 for the worker whose task raised).

Plain `luigi` exits 40 or 60 in every worker but the one that ran the last task (see
pipeline/retcodes.py); `python -m pipeline.retcodes` is the entry point that does not."""

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

import servers

pytestmark = pytest.mark.slow  # servers on 127.0.0.1 and processes racing: tens of seconds

TESTS = Path(__file__).resolve().parent

# The [retcode] section of the repo's luigi.cfg, word for word, and what the workers add to it.
RETCODES = """\
[retcode]
missing_data = 20
task_failed = 30
already_running = 40
scheduling_error = 50
not_run = 60
unhandled_exception = 70
"""
WORKER_SETTINGS = """\
[core]
autoload_range = false
[worker]
# how long an idle worker waits before scheduling the job again (luigi's own settings; the
# defaults, 1 s plus up to 5 s of jitter, work the same, only slower)
wait_interval = 0.2
wait_jitter = 0.3
"""


def test_repo_luigi_cfg_has_these_retcodes():
    """The workers below run under the same exit codes as a user's luigi.cfg."""
    text = (TESTS.parent / "luigi.cfg").read_text()
    for line in RETCODES.splitlines():
        assert line in text.splitlines()


@pytest.fixture
def luigid(tmp_path):
    """luigid on a free 127.0.0.1 port with its state in tmp_path: its port; stopped afterwards."""
    with servers.luigid(tmp_path) as (port, _):
        yield port


def run_workers(tmp_path, port, *task_args, n=3, entry=("-m", "pipeline.retcodes")):
    """Start n worker processes on the same job at once; return (exit codes, pids, logs)."""
    config = tmp_path / "luigi.cfg"
    config.write_text(RETCODES + WORKER_SETTINGS)
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    workers = []
    for i in range(n):
        # Each worker its own pid-lock directory, as on separate machines: luigi's lock would
        # otherwise stop the 2nd and 3rd identical command on this host (exit 40).
        command = [sys.executable, *entry, "--module", "toytasks", "ToyTask",
                   "--out-dir", str(out), *task_args, "--scheduler-host", "127.0.0.1",
                   "--scheduler-port", str(port), "--lock-pid-dir", str(tmp_path / f"pids-{i}")]
        workers.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    logs = [w.communicate(timeout=120)[0] for w in workers]
    return [w.returncode for w in workers], [w.pid for w in workers], logs


def ran(tmp_path):
    """(task name, pid) for every run() of a toy task, in order."""
    log = tmp_path / "out" / "ran.log"
    return [tuple(line.split()) for line in log.read_text().splitlines()] if log.exists() else []


def test_three_workers_exit_0_and_each_task_runs_once(tmp_path, luigid):
    codes, pids, logs = run_workers(tmp_path, luigid)
    assert codes == [0, 0, 0], "\n\n".join(log[-3000:] for log in logs)
    runs = ran(tmp_path)
    assert collections.Counter(name for name, _ in runs) == dict.fromkeys("abcdef", 1)
    assert {int(pid) for _, pid in runs} <= set(pids)
    assert all((tmp_path / "out" / f"{name}.done").exists() for name in "abcdef")
    # A second round finds everything done and exits 0 at once, running nothing.
    codes, _, _ = run_workers(tmp_path, luigid)
    assert codes == [0, 0, 0] and len(ran(tmp_path)) == 6


def test_plain_luigi_fails_workers_that_met_another_workers_task(tmp_path, luigid):
    """The problem pipeline.retcodes solves: with the same job and config, `luigi` itself exits
    40 (already_running) or 60 (not_run) in every worker that met a task another one ran."""
    luigi_main = ("-c", "import sys, luigi.cmdline; sys.argv[0] = 'luigi'; luigi.cmdline.luigi_run()")
    codes, _, logs = run_workers(tmp_path, luigid, "--sleep", "1.0", entry=luigi_main)
    assert collections.Counter(name for name, _ in ran(tmp_path)) == dict.fromkeys("abcdef", 1)
    # (usually all three: the one that ran the last task also met tasks the others ran)
    assert set(codes) <= {0, 40, 60} and sum(code != 0 for code in codes) >= 2, codes


@pytest.mark.parametrize("failing", ["e", "f"])
def test_a_failing_task_fails_the_worker_that_ran_it_with_30(tmp_path, luigid, failing):
    codes, pids, logs = run_workers(tmp_path, luigid, "--fail", failing)
    detail = f"{codes}\n" + "\n\n".join(log[-3000:] for log in logs)
    ran_failing = {int(pid) for name, pid in ran(tmp_path) if name == failing}
    assert ran_failing, detail
    for code, pid in zip(codes, pids):
        # 30 where the task raised; elsewhere luigi's code for an unfinished job (40 or 60)
        assert code == 30 if pid in ran_failing else code in (40, 60), detail
    assert not (tmp_path / "out" / "f.done").exists()
    # Nothing downstream of the failure ran; a task another worker saw fail is not retried by
    # every worker (one may retry it when it re-scheduled just as the task failed).
    names = [name for name, _ in ran(tmp_path)]
    assert "f" not in names or failing == "f"
    assert names.count(failing) <= 2, detail
