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

luigi.cfg: the [retcode] section as it is; nothing else is needed. [worker] wait_interval and
wait_jitter (luigi's own, 1 s and 5 s by default) set how long an idle worker waits before
scheduling the task again. Leave [worker] keep_alive false (the default): with it, luigi counts
a task that failed in another worker as pending, so every other worker waits for the
scheduler's retry_delay (15 minutes) and then runs the failing task again itself.
"""

import logging
import random
import sys
import time

import luigi
import luigi.execution_summary
import luigi.interface
import luigi.retcodes
import luigi.worker
from luigi.cmdline_parser import CmdlineParser

logger = logging.getLogger("luigi-interface")


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
    return max(code if task_sets[status] else 0 for code, status in (
        (codes.missing_data, "still_pending_ext"),
        (codes.task_failed, "failed"),
        (codes.scheduling_error, "scheduling_error"),
    ))


def _running_elsewhere(worker):
    """Tasks of this worker's graph that other workers were running when it last asked for work."""
    responses = worker._get_work_response_history
    if not responses:
        return []
    return [task["task_id"] for task in responses[-1]["running_tasks"] if task.get("worker") != str(worker._id)
            and task.get("task_id") in worker._scheduled_tasks]


def _failed_elsewhere(worker):
    """Tasks of this worker's graph that the scheduler has as failed or disabled now. Scheduling
    the graph again would make this worker retry them (luigi sets a failed task back to pending
    when a worker adds it), so a failure in one worker is not repeated by every other."""
    failed = set()
    for status in ("FAILED", "DISABLED"):
        failed.update(worker._scheduler.task_list(status, "", limit=False) or {})
    return sorted(failed & set(worker._scheduled_tasks))


def run(argv):
    """Run luigi with `argv` (as for the `luigi` command, without the program name) until the
    requested task is complete or cannot be completed; return the exit code (see the module)."""
    argv = list(argv)
    with CmdlineParser.global_instance(argv):
        codes = luigi.retcodes.retcode()
        settings = luigi.worker.worker()
    attempt_argv = argv
    while True:
        try:
            worker = luigi.interface._run(attempt_argv).worker
        except luigi.interface.PidLockAlreadyTakenExit:
            return codes.already_running
        except Exception:
            logger.exception("Uncaught exception in luigi")
            return codes.unhandled_exception
        try:
            with CmdlineParser.global_instance(attempt_argv):
                task_sets = luigi.execution_summary._summary_dict(worker)
                root = luigi.execution_summary._root_task(worker)
                failure = _real_failure(codes, task_sets)
                if failure:
                    return failure
                if root.complete():
                    return 0
            waiting_for = _running_elsewhere(worker)
            if waiting_for:
                logger.info("%s is not complete; other workers are running %d of its tasks; scheduling "
                            "it again when they are done", root, len(waiting_for))
                time.sleep(settings.wait_interval + random.uniform(0, settings.wait_jitter))
            failed = _failed_elsewhere(worker)
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
    sys.exit(run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
