"""`mnist-pipeline history`: past runs with their state, duration and accuracy.

    mnist-pipeline history                                  # from artifacts/runs.csv (finished runs)
    mnist-pipeline history --db sqlite:////var/lib/luigid/history.db   # luigid's task history
    mnist-pipeline history --db ... --all                   # every task, not only runs and sweeps

luigid keeps a history when its luigi.cfg has [scheduler] record_task_history = true and
[task_history] db_connection = <SQLAlchemy URL>; --db defaults to that db_connection. Its
tables (luigi.db_task_history): tasks (one row per scheduled task), task_parameters, task_events
(PENDING, RUNNING, DONE, FAILED, DISABLED with a time each). A row's accuracy comes from the
runs index, matched by run id (computed from the task's parameters as the tasks do).
"""

import datetime
import json

from pipeline.errors import PipelineError
from pipeline.report import stage_seconds

# seconds: the task's own, RUNNING to DONE or FAILED; run_seconds: every stage of the run, from its report
COLUMNS = ["started", "task", "run", "state", "seconds", "run_seconds", "host", "train_accuracy", "test_accuracy"]
RUN_FAMILIES = ("EvaluateNetwork", "Sweep")


def add_parser(commands):
    """The `history` subcommand on the CLI's subparsers."""
    history = commands.add_parser("history", help="past runs: state, duration and accuracy, from luigid's task "
                                                  "history (--db) or the runs index")
    history.add_argument("--db", default=None, help="an SQLAlchemy URL of luigid's task history (default: "
                                                    "luigi.cfg [task_history] db_connection; none: runs.csv)")
    history.add_argument("--artifacts-dir", default="artifacts", help="where runs.csv is (default: artifacts)")
    history.add_argument("--all", action="store_true", help="every task, not only EvaluateNetwork and Sweep")
    history.add_argument("--limit", type=int, default=50, help="the most recent N rows (default: 50)")
    history.set_defaults(handler=command)


def command(args):
    from pipeline.cli import print_table

    url = args.db or _configured_url()
    index = read_index(args.artifacts_dir)
    rows = from_database(url, index, args.all) if url else from_index(index)
    if not rows:
        where = url or f"{args.artifacts_dir.rstrip('/')}/runs.csv"
        print(f"no runs recorded yet in {where}")
        return 0
    rows = rows[-args.limit:] if args.limit > 0 else rows
    print_table(COLUMNS, [[_shown(row.get(c, "")) for c in COLUMNS] for row in rows])
    return 0


def _configured_url():
    import luigi.configuration

    return luigi.configuration.get_config().get("task_history", "db_connection", "") or None


def read_index(artifacts_dir):
    """{run_id: row} of the runs index (runs.csv; artifacts_dir a directory or s3:// location),
    each row with "seconds": its report's stages added up."""
    from pipeline import runs, storage

    index = {}
    for row in runs.read_runs(artifacts_dir):
        report = storage.join(artifacts_dir, row.get("dataset", ""), row.get("run_id", ""), "report", "report.json")
        try:
            stages = stage_seconds(json.loads(storage.read_bytes(report)))
            row["seconds"] = round(sum(stages.values()), 3)
        except (OSError, ValueError, AttributeError, PipelineError):
            row["seconds"] = ""
        index[row.get("run_id", "")] = row
    return index


def from_index(index):
    """History rows of the finished runs in the runs index, oldest first."""
    rows = [{"started": row.get("finished_at", ""), "task": "EvaluateNetwork", "run": run_id, "state": "DONE",
             "seconds": "", "run_seconds": row.get("seconds", ""), "host": "",
             "train_accuracy": row.get("train_accuracy", ""), "test_accuracy": row.get("test_accuracy", "")}
            for run_id, row in index.items()]
    return sorted(rows, key=lambda r: r["started"])


def from_database(url, index, every_task=False):
    """History rows from luigid's task history database at an SQLAlchemy URL, oldest first:
    each task's last state, the seconds from RUNNING to DONE or FAILED, and for runs the
    accuracy the runs index has."""
    try:
        import sqlalchemy
    except ImportError:
        raise PipelineError("reading luigid's task history needs SQLAlchemy: pip install sqlalchemy") from None
    try:
        engine = sqlalchemy.create_engine(url)
    except Exception as error:
        raise PipelineError(f"--db {url!r} is not a database URL SQLAlchemy can open ({error})") from None
    try:
        with engine.connect() as connection:
            tasks = connection.execute(sqlalchemy.text("SELECT id, name, host FROM tasks ORDER BY id")).fetchall()
            events = connection.execute(sqlalchemy.text(
                "SELECT task_id, event_name, ts FROM task_events ORDER BY ts, id")).fetchall()
            parameters = connection.execute(sqlalchemy.text(
                "SELECT task_id, name, value FROM task_parameters")).fetchall()
    except sqlalchemy.exc.SQLAlchemyError as error:
        raise PipelineError(f"{url} holds no luigid task history ({str(error).splitlines()[0]}): give the "
                            f"[task_history] db_connection of a luigid with record_task_history = true") from None
    finally:
        engine.dispose()
    by_task, params = {}, {}
    for task_id, name, ts in events:
        by_task.setdefault(task_id, []).append((name, _time(ts)))
    for task_id, name, value in parameters:
        params.setdefault(task_id, {})[name] = value
    rows = []
    for record_id, name, host in tasks:
        if not every_task and name not in RUN_FAMILIES:
            continue
        history = by_task.get(record_id, [])
        started = next((ts for event, ts in history if event == "RUNNING"), None)
        ended = next((ts for event, ts in reversed(history) if event in ("DONE", "FAILED")), None)
        run = run_id_of(name, params.get(record_id, {}))
        found = index.get(run, {})
        first = started or (history[0][1] if history else None)
        seconds = round((ended - started).total_seconds(), 3) if started and ended and ended >= started else ""
        rows.append({"started": str(first)[:19] if first else "", "order": first or datetime.datetime.min,
                     "task": name, "run": run, "state": history[-1][0] if history else "",
                     "seconds": seconds, "run_seconds": found.get("seconds", ""), "host": host or "",
                     "train_accuracy": found.get("train_accuracy", ""), "test_accuracy": found.get("test_accuracy", "")})
    return sorted(rows, key=lambda r: r["order"])


RUN_TASKS = ("CheckGradient", "TrainNetwork", "EvaluateNetwork")


def run_id_of(family, str_params):
    """The run id of a pipeline run task given its parameters as luigid stores them (strings);
    "" for another task (a sweep's id depends on all its runs) or parameters that do not fit."""
    from pipeline import runs

    if family not in RUN_TASKS:
        return ""
    try:
        return runs.run_name(runs.identity(str_params))
    except (KeyError, TypeError, ValueError):  # a task of another version or module: shown without a run
        return ""


def _time(ts):
    if isinstance(ts, datetime.datetime):
        return ts
    try:
        return datetime.datetime.fromisoformat(str(ts))
    except ValueError:
        return None


def _shown(value):
    if isinstance(value, float):
        return f"{value:.3f}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return f"{number:.4f}" if "." in str(value) and number < 1.0001 else value
