"""Exit codes for workers that share Luigi's central scheduler.

`luigi --module M Task ...` computes its exit code from what *this* worker saw: a task that
another worker was running when this one ran out of work counts as `already_running`, and a
task that another worker finished counts as `not_run` (this worker never got permission to
run it). So with a `[retcode]` section, every worker but the one that ran the last task exits
40 or 60 although all the work is done. No luigi setting changes that without also hiding
real conditions (`already_running = 0` would hide the local pid lock too).

    python -m pipeline.retcodes --module pipeline.tasks Sweep ... --scheduler-host H

takes the same arguments as `luigi` and exits:
- luigi's own code when this worker met a real problem: a task it ran failed (`task_failed`),
  an external input is missing (`missing_data`), scheduling failed (`scheduling_error`),
  the pid lock is held (`already_running`), luigi itself crashed (`unhandled_exception`);
- 0 when the requested task is complete, whoever ran which part of it;
- otherwise, while other workers are running tasks the requested one needs, it waits
  ([worker] wait_interval plus up to wait_jitter seconds) and schedules the task again (which
  runs whatever became runnable meanwhile) until one of the above holds;
- when the task is incomplete and nobody is running anything it needs, or a task it needs
  failed in another worker (which this worker does not retry), luigi's code for this worker's
  run (`not_run` or `already_running`): non-zero, and not `task_failed`, which stays the code
  of the worker whose task raised.
A worker that was killed does not block the others for long: the scheduler hands its running
tasks out again after [scheduler] worker_disconnect_delay (60 s).

A Range task (RangeDailyBase ...) is checked before it is scheduled: a reversed range or
--of-params its task refuses is a one-line error and `unhandled_exception` (70), as for any
refused parameter, an unknown task or an unknown --module. The command (main) records its outcome in the metrics luigi.cfg's [metrics]
names (pipeline/metrics.py).

One luigi internal is used: `luigi.execution_summary._summary_dict`, the per-status task sets
that luigi's own `luigi.retcodes` reads too. It is looked up before anything runs: a luigi
without it is a one-line error naming it and the tested versions (pyproject.toml). The rest is
public API: `luigi.interface.run`, `CmdlineParser`, `luigi.rpc.RemoteScheduler` and the
scheduler's `dep_graph`.

luigi.cfg: the [retcode] section as it is; nothing else is needed. [worker] wait_interval and
wait_jitter (luigi's own, 1 s and 5 s by default) set how long an idle worker waits before
scheduling the task again. Leave [worker] keep_alive false (the default): with it, luigi counts
a task that failed in another worker as pending, so every other worker waits for the
scheduler's retry_delay (15 minutes) and then runs the failing task again itself.
"""

import datetime
import logging
import random
import sys
import time

import luigi
import luigi.execution_summary
import luigi.interface
import luigi.retcodes
import luigi.rpc
import luigi.task_register
import luigi.tools.range
import luigi.worker
from luigi.cmdline_parser import CmdlineParser

from pipeline import metrics
from pipeline.errors import ParameterError, PipelineError

logger = logging.getLogger("luigi-interface")
TESTED = "luigi>=3.5,<3.9"  # keep in step with pyproject.toml


def luigi_internal(module, name):
    """module.name, or a PipelineError naming it: a luigi internal this entry point relies on."""
    try:
        return getattr(module, name)
    except AttributeError:
        version = getattr(luigi, "__version__", None) or _luigi_version()
        raise PipelineError(f"luigi {version} has no {module.__name__}.{name}, which mnist-pipeline-luigi "
                            f"needs: install a tested luigi ({TESTED})") from None


def _luigi_version():
    from importlib import metadata

    try:
        return metadata.version("luigi")
    except metadata.PackageNotFoundError:
        return "(unknown version)"


def _own_code(codes, task_sets):
    """luigi's exit code for what this worker saw, as luigi.retcodes.run_with_retcodes has it."""
    has = {status for status, tasks in task_sets.items() if tasks}
    return max(code if status in has else 0 for code, status in (
        (codes.missing_data, "still_pending_ext"),
        (codes.task_failed, "failed"),
        (codes.already_running, "run_by_other_worker"),
        (codes.scheduling_error, "scheduling_error"),
        (codes.not_run, "not_run"),
    ))


def _real_failure(codes, task_sets):
    """The code of a condition that no other worker can cure, or 0."""
    return max(code if task_sets.get(status) else 0 for code, status in (
        (codes.missing_data, "still_pending_ext"),
        (codes.task_failed, "failed"),
        (codes.scheduling_error, "scheduling_error"),
    ))


def scheduler_url(core):
    """The central scheduler's URL as luigi.interface computes it, or None for --local-scheduler."""
    if core.local_scheduler:
        return None
    return core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port:d}/"


def graph_states(url, root_id):
    """{task id: status} of the root's graph as the central scheduler has it now ({} without one).
    After this worker's run returned, a RUNNING task of the graph runs in another worker; a FAILED
    or DISABLED one failed there."""
    if url is None:
        return {}
    graph = luigi.rpc.RemoteScheduler(url).dep_graph(root_id) or {}
    return {task_id: info.get("status") for task_id, info in graph.items()}


def check_range(task):
    """For a Range task (luigi.tools.range): ParameterError for a reversed range, and the error of
    its `of` task with --of-params at the first date, before anything is scheduled."""
    if not isinstance(task, luigi.tools.range.RangeBase):
        return
    start, stop = getattr(task, "start", None), getattr(task, "stop", None)
    if start is not None and stop is not None and start > stop:
        raise ParameterError(f"invalid range: start {start} is after stop {stop}: give --start before --stop")
    first = start if start is not None else datetime.date.today()
    of_params = dict(task.of_params or {})
    if task.param_name:
        task.of(**{**of_params, task.param_name: first})
    else:
        task.of(first, **of_params)


def _refused(error):
    """The one line of a parameter error of the command, or None for anything else."""
    if isinstance(error, (PipelineError, luigi.parameter.ParameterException)):
        return f"{type(error).__name__}: {error}"
    return None


def run(argv, outcome=None):
    """Run luigi with `argv` (as for the `luigi` command, without the program name) until the
    requested task is complete or cannot be completed; return the exit code (see the module).
    outcome, a dict, gets "root": the requested task once it is built."""
    return _run(list(argv), {} if outcome is None else outcome)


def record_metrics(argv, code, started, root):
    """The command's outcome in the metrics luigi.cfg names (pipeline/metrics.py), as "luigi"."""
    try:
        runs = metrics.figures_of(root) if code == 0 and root is not None else ()
        dataset = getattr(root, "dataset", None) or (getattr(root, "of_params", None) or {}).get("dataset")
        metrics.record("luigi", dataset or _flag(argv, "--dataset"), code, started=started, runs=runs,
                       run=getattr(root, "sweep_id", None) or getattr(root, "run_id", "") if root is not None else "")
    except Exception as error:  # a monitor's trouble never changes the exit code
        logger.warning("metrics: not recorded (%s)", error)


def _flag(argv, name):
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _run(argv, outcome):
    codes = luigi.retcodes.retcode()
    try:
        with CmdlineParser.global_instance(argv):
            codes = luigi.retcodes.retcode()
            settings = luigi.worker.worker()
    except (luigi.task_register.TaskClassException, ImportError) as error:  # no such task or module
        logger.error("refused: %s: %s", type(error).__name__, " ".join(str(error).split()))
        return codes.unhandled_exception
    try:
        summary_dict = luigi_internal(luigi.execution_summary, "_summary_dict")
        with CmdlineParser.global_instance(argv) as parser:
            root = outcome["root"] = parser.get_task_obj()
            url = scheduler_url(luigi.interface.core())
            check_range(root)
    except Exception as error:
        message = _refused(error)
        if message is None:
            logger.exception("Uncaught exception in luigi")
        else:
            logger.error("refused: %s", message)
        return codes.unhandled_exception
    attempt_argv = argv
    while True:
        try:
            result = luigi.interface.run(attempt_argv, detailed_summary=True)
        except luigi.interface.PidLockAlreadyTakenExit:
            return codes.already_running
        except Exception:
            logger.exception("Uncaught exception in luigi")
            return codes.unhandled_exception
        try:
            with CmdlineParser.global_instance(attempt_argv):
                task_sets = summary_dict(result.worker)
                failure = _real_failure(codes, task_sets)
                if failure:
                    return failure
                if root.complete():
                    return 0
                states = graph_states(url, root.task_id)
            # what this worker saw other workers run (luigi's summary), and what the scheduler has running now
            waiting_for = {task.task_id for task in task_sets.get("run_by_other_worker") or ()}
            waiting_for |= {task_id for task_id, state in states.items() if state == "RUNNING"}
            if waiting_for:
                logger.info("%s is not complete; other workers are running %d of its tasks; scheduling "
                            "it again when they are done", root, len(waiting_for))
                time.sleep(settings.wait_interval + random.uniform(0, settings.wait_jitter))
                states = graph_states(url, root.task_id)  # one may have failed meanwhile: not ours to retry
            failed = sorted(task_id for task_id, state in states.items() if state in ("FAILED", "DISABLED"))
            if not waiting_for and not failed:
                with CmdlineParser.global_instance(attempt_argv):
                    if root.complete():  # finished elsewhere between the check above and the scheduler's answer
                        return 0
        except Exception:
            logger.exception("Uncaught exception while checking the shared work")
            return codes.unhandled_exception
        if not waiting_for or failed:
            if failed:
                logger.error("%s cannot be completed: %d of its tasks failed in another worker",
                             root, len(failed))
            return _own_code(codes, task_sets) or codes.not_run
        # This process holds luigi's pid lock from the first round; taking it again would fail.
        attempt_argv = [*argv, "--no-lock"]


def main(argv=None):
    """The mnist-pipeline-luigi command: run(), its outcome recorded in the metrics, its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    started, outcome, code = time.time(), {}, 1
    try:
        code = run(argv, outcome)
    finally:
        record_metrics(argv, code, started, outcome.get("root"))
    sys.exit(code)


if __name__ == "__main__":
    main()
