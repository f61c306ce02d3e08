"""The mnist-pipeline command: run the chain, say what would run, inspect artifacts, predict.

    mnist-pipeline run --dataset fashion-mnist
    mnist-pipeline status --dataset fashion-mnist  # what is complete, what would run and why
    mnist-pipeline inspect                         # every run
    mnist-pipeline inspect artifacts/fashion-mnist/h50-b100-lr0.1-s0-1a2b3c4d
    mnist-pipeline predict artifacts/.../model.h5 t10k-images-idx3-ubyte.gz [t10k-labels-idx1-ubyte.gz]
    mnist-pipeline predict artifacts/... digit.png photo.jpg   # ordinary pictures, one label each
    mnist-pipeline diff RUN_A RUN_B                             # parameters and final figures side by side
    mnist-pipeline sweep --hidden-sizes '[50,100]' --learning-rates '[0.1,0.5]'

Errors the pipeline expects (a missing file, a damaged checkpoint, a bad parameter) are
printed as one line, "mnist-pipeline: error: ...", with a non-zero exit code.
"""

import argparse
import configparser
import csv
import json
import shutil
import socket
import sys
from pathlib import Path

from pipeline import __version__, checkpoint, history, lineage, metrics, runs
from pipeline.errors import CheckpointError, ParameterError, PipelineError
from pipeline.logs import stdout_reader_gone, user_message

EXIT_USAGE = 2  # argparse's code for a bad command line; bad parameters count as one
EXIT_WOULD_RUN = 3  # `status`: some task is not complete


def main(argv=None):
    """The command's exit code. A reader that stops reading (`mnist-pipeline inspect | head -1`)
    ends it quietly with 0, as `predict` does: the output was not wanted further, nothing failed."""
    try:
        try:
            args = build_parser().parse_args(argv)
            return args.handler(args)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, in main, not as an error at interpreter exit
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        return 0
    except (PipelineError, ValueError, configparser.Error) as error:
        message = user_message(error) if not isinstance(error, configparser.Error) else (
            f"luigi.cfg cannot be read: {str(error).splitlines()[0]}")
        if message is None:
            raise
        print(f"mnist-pipeline: error: {message}", file=sys.stderr)
        usage = isinstance(error, (ParameterError, configparser.Error)) or not isinstance(error, PipelineError)
        return EXIT_USAGE if usage else 1
    except KeyboardInterrupt:
        print("mnist-pipeline: interrupted", file=sys.stderr)
        return 130


def build_parser():
    parser = argparse.ArgumentParser(prog="mnist-pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"mnist-pipeline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, task_class, what in (("run", "EvaluateNetwork", "train and evaluate one run (EvaluateNetwork and "
                                                                "all it needs)"),
                                   ("sweep", "Sweep", "train and evaluate every combination of the lists, then "
                                                      "compare them (Sweep)")):
        command = commands.add_parser(name, help=what, description=what)
        _task_flags(command, task_class)
        command.add_argument("--workers", type=int, default=1, help="Luigi worker processes (default: 1)")
        command.add_argument("--scheduler-host", default=None,
                             help="a central luigid's host (default: none, the local scheduler)")
        command.add_argument("--scheduler-port", type=int, default=8082, help="the central luigid's port "
                                                                               "(default: 8082)")
        command.add_argument("--no-lock", action="store_true",
                             help="with --scheduler-host: let several identical workers run on one host "
                                  "(luigi's pid lock turns the second away otherwise)")
        command.set_defaults(handler=metrics.recorded(run_command, _target))  # metrics of every run and sweep

    status = commands.add_parser("status", help="say which tasks of a run are complete, stale or to run; "
                                                f"exit 0 when all are complete, {EXIT_WOULD_RUN} otherwise")
    _task_flags(status)
    status.set_defaults(handler=status_command)

    inspect = commands.add_parser("inspect", help="list runs, or show one run directory or .h5 file")
    inspect.add_argument("path", nargs="?", help="a run directory or an .h5 file; nothing for all runs")
    inspect.add_argument("--artifacts-dir", default="artifacts", help="where runs.csv is (default: artifacts)")
    inspect.set_defaults(handler=inspect_command)

    predict = commands.add_parser("predict", help="predict the labels of an IDX images file, or of pictures")
    predict.add_argument("model", help="a checkpoint .h5 file or a run directory (its model.h5)")
    predict.add_argument("inputs", nargs="+", metavar="FILE",
                         help="an IDX images file (gzipped or not) and optionally its IDX labels file; or "
                              "pictures (PNG, JPEG, ...) of one digit or garment each")
    predict.add_argument("--summary", action="store_true", help="print only the counts (and accuracy)")
    predict.add_argument("--format", choices=("text", "csv", "json"), default="text",
                         help="one line per image: tab-separated text, CSV with a header, or JSON (default: text)")
    predict.add_argument("--framing", choices=("mnist", "fill"), default=None,
                         help="how pictures are framed: mnist (20-pixel box, centred by mass) or fill (28 pixels, "
                              "Fashion-MNIST's) (default: the model's)")
    predict.set_defaults(handler=predict_command)

    gc = commands.add_parser("gc", help="show what runs and datasets take, on a disk or in a bucket, and what could "
                                        "go; removes only with --yes, and only in roots the pipeline made")
    gc.add_argument("--artifacts-dir", default="artifacts",
                    help="the runs' root: a directory or s3://bucket/prefix (default: artifacts)")
    gc.add_argument("--data-dir", default="data",
                    help="the datasets' root: a directory or s3://bucket/prefix (default: data)")
    gc.add_argument("--keep-runs", type=int, default=None, metavar="N",
                    help="also remove finished runs older than the N most recent")
    gc.add_argument("--checkpoints", action="store_true",
                    help="also remove finished runs' checkpoints but the last (their reports do not need them)")
    gc.add_argument("--cache-dir", default=None, metavar="DIR",
                    help="also clean this worker's cache: downloads not used for --cache-days days, and working "
                         "copies (run it when no worker uses DIR)")
    gc.add_argument("--cache-days", type=float, default=7.0, metavar="D",
                    help="with --cache-dir: remove cached downloads not used for D days; 0 removes them all "
                         "(default: 7)")
    gc.add_argument("--yes", action="store_true", help="remove what is listed (without it, nothing is removed)")
    gc.set_defaults(handler=gc_command)

    diff = commands.add_parser("diff", help="compare two finished runs: parameters and final figures")
    diff.add_argument("run_a", help="a run directory (or s3 location), or a run id")
    diff.add_argument("run_b", help="another run directory, or a run id")
    diff.add_argument("--artifacts-dir", default="artifacts", help="where run ids are looked up (default: artifacts)")
    diff.set_defaults(handler=diff_command)
    history.add_parser(commands)  # mnist-pipeline history (pipeline/history.py)
    return parser


def _task_flags(parser, task_class="EvaluateNetwork"):
    """One flag per parameter of a task (JSON for lists and dicts), its default shown as luigi.cfg
    or the code sets it."""
    from pipeline import tasks  # luigi is imported only where the chain is run

    for name, param in getattr(tasks, task_class).get_params():
        try:
            default = param.task_value(task_class, name)
        except Exception:  # a bad luigi.cfg value: reported when the task is built
            default = None
        default = default.isoformat() if hasattr(default, "isoformat") else default
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                            help=f"{param.description or ''} (default: {default})")
    parser.set_defaults(task_class=task_class)


def _target(args):
    from pipeline import tasks

    task_class = getattr(tasks, args.task_class)
    given = {name: param.parse(getattr(args, name)) for name, param in task_class.get_params()
             if getattr(args, name, None) is not None}
    return task_class(**given)  # ParameterError for a bad value, before any work


# --- run ---

def run_command(args):
    from pipeline import storage

    target = _target(args)
    for location in {target.data_dir, target.artifacts_dir}:
        storage.check_reachable(location)
    if args.scheduler_host:
        code = _run_on_scheduler(args)
        status_name = "see the log above"
    else:
        status, failures = build([target], workers=args.workers)
        code, status_name = exit_code(status), status.name
        for task, message in failures if code else ():
            print(f"mnist-pipeline: error: {task.get_task_family()} failed: {message}", file=sys.stderr)
    if code:
        print(f"mnist-pipeline: the run did not finish ({status_name}); exit code {code}", file=sys.stderr)
        return code
    if args.task_class == "Sweep":
        print(f"sweep: {storage.join(storage.parent(target.output().location), 'index.html')}")
        return 0
    final = json.loads(storage.read_bytes(target.output().location))["final"]
    print(f"run:    {target.run_location}")
    print(f"report: {storage.join(target.run_location, 'report', 'report.md')}")
    print(f"final train accuracy {final['train_accuracy']:.4f}, test accuracy {final['test_accuracy']:.4f} "
          f"after {final['iteration']} iterations")
    return 0


def _run_on_scheduler(args):
    """Run the task as one worker of a central luigid, with the exit code of pipeline.retcodes:
    0 once the whole task is complete, whichever worker ran which part."""
    from pipeline import retcodes, tasks

    try:
        socket.create_connection((args.scheduler_host, args.scheduler_port), timeout=3).close()
    except OSError as error:
        raise PipelineError(f"cannot reach luigid at {args.scheduler_host}:{args.scheduler_port} ({error}): "
                            f"start it, or leave out --scheduler-host to use the local scheduler") from None
    argv = ["--module", "pipeline.tasks", args.task_class, "--scheduler-host", args.scheduler_host,
            "--scheduler-port", str(args.scheduler_port), "--workers", str(args.workers)]
    argv += ["--no-lock"] if args.no_lock else []
    for name, _ in getattr(tasks, args.task_class).get_params():
        if getattr(args, name, None) is not None:
            argv += ["--" + name.replace("_", "-"), getattr(args, name)]
    return retcodes.run(argv)


_failures = []  # (task, message) of the failures in this process, for build()


def build(tasks_to_run, workers=1):
    """Run tasks and their requirements with the local scheduler: (luigi's LuigiStatusCode,
    [(task, message)] of failures in this process). A bare True from luigi.build only means
    "no scheduling error"."""
    import luigi

    @luigi.Task.event_handler(luigi.Event.FAILURE)
    def remember(task, exception):
        _failures.append((task, user_message(exception) or f"{type(exception).__name__}: {exception}"))

    del _failures[:]
    try:
        result = luigi.build(tasks_to_run, detailed_summary=True, workers=workers, local_scheduler=True)
    finally:
        luigi.Task._event_callbacks.get(luigi.Task, {}).get(luigi.Event.FAILURE, set()).discard(remember)
    return result.status, list(_failures)


def exit_code(status):
    """The exit code of a luigi status, from luigi.cfg's [retcode] as the luigi command uses it;
    never 0 for a failure, even without [retcode]."""
    from luigi.execution_summary import LuigiStatusCode
    from luigi.retcodes import retcode

    if status in (LuigiStatusCode.SUCCESS, LuigiStatusCode.SUCCESS_WITH_RETRY):
        return 0
    codes = retcode()
    code = {
        LuigiStatusCode.FAILED: codes.task_failed,
        LuigiStatusCode.FAILED_AND_SCHEDULING_FAILED: max(codes.task_failed, codes.scheduling_error),
        LuigiStatusCode.SCHEDULING_FAILED: codes.scheduling_error,
        LuigiStatusCode.NOT_RUN: codes.not_run,
        LuigiStatusCode.MISSING_EXT: codes.missing_data,
    }.get(status, codes.unhandled_exception)
    return code or 1


# --- status ---

def status_command(args):
    from pipeline import storage, tasks

    target = _target(args)
    for location in {target.data_dir, getattr(target, "artifacts_dir", target.data_dir)}:
        storage.check_reachable(location)
    seen, rows = set(), []

    def visit(task):
        if task.task_id in seen:
            return
        seen.add(task.task_id)
        for requirement in tasks.luigi.task.flatten(task.requires()):
            visit(requirement)
        reason = task.stale_reason()
        made = reason is None or task.output().exists()
        state = "complete" if reason is None else "stale" if made else "to run"
        where = getattr(task, "run_id", task.dataset)
        rows.append([task.get_task_family(), where, state, reason or ""])

    with tasks.one_look():
        visit(target)
    print_table(["task", "of", "state", "why"], rows)
    return 0 if all(row[2] == "complete" for row in rows) else EXIT_WOULD_RUN


# --- inspect ---

def _local_copy(location, keep):
    """A local path holding a run directory or file: the path itself on a disk, or a copy of the
    object (or of every object under the prefix) in a temporary directory listed in `keep`."""
    import tempfile

    from pipeline import storage

    def folder():
        made = Path(tempfile.mkdtemp(prefix="mnist-pipeline-"))
        keep.append(made)
        return made

    return storage.local_copy(storage.parse(location), folder)


def _removing_copies(command):
    """command(args, keep), then the temporary folders _local_copy listed in keep are removed."""
    def run(args):
        keep = []
        try:
            return command(args, keep)
        finally:
            for folder in keep:
                shutil.rmtree(folder, ignore_errors=True)

    return run


def _run_location(text, artifacts_dir):
    """A run directory's location: `text` itself when something is there, else the run of that id
    in the runs index of artifacts_dir."""
    from pipeline import storage

    location = storage.parse(text)
    if storage.exists(location) or storage.listing(location):
        return location
    if "/" not in text:
        row = runs.find_run(artifacts_dir, text)
        if row is not None:
            return storage.join(artifacts_dir, row["dataset"], row["run_id"])
    raise ParameterError(f"{text} does not exist, as a path or as a run id of {storage.join(artifacts_dir, 'runs.csv')}: "
                        f"give a run directory, an .h5 file or a run id (`mnist-pipeline inspect` lists the runs)")


@_removing_copies
def inspect_command(args, keep):
    from pipeline import storage

    artifacts_dir = storage.parse(args.artifacts_dir, "artifacts_dir")
    storage.check_reachable(artifacts_dir)
    if args.path is None:
        rows = runs.read_runs(artifacts_dir)
        if not rows:
            raise PipelineError(f"no runs yet in {storage.join(artifacts_dir, 'runs.csv')} (run `mnist-pipeline run` "
                                f"first)")
        return _print_runs(rows)
    location = _run_location(args.path, artifacts_dir)
    path = _local_copy(location, keep)
    if path.is_dir():
        return show_run(path, location)
    print(checkpoint.describe_h5(path))
    return 0


def _print_runs(rows):
    columns = ["run_id", "dataset", "hidden_size", "batch_size", "learning_rate", "iterations", "seed",
               "train_accuracy", "test_accuracy", "finished_at"]
    print_table(columns, [[_short(row.get(c, "")) for c in columns] for row in rows])
    return 0


def show_run(run_dir, location):
    paths = checkpoint.list_checkpoints(run_dir / "checkpoints")
    if not paths:
        raise PipelineError(f"{location} is not a run directory (it has no checkpoints/iter-*.h5)")
    params = None
    for path in reversed(paths):
        try:
            params = checkpoint.load_checkpoint(path).hyperparameters
            break
        except CheckpointError:
            continue
    print(f"run {location}")
    for key, value in (params or {}).items():
        print(f"  {key}: {value}")

    print(f"\ncheckpoints ({len(paths)}):")
    rows = []
    for path in paths:
        try:
            c = checkpoint.load_checkpoint(path)
            loss = c.attrs.get("minibatch_loss")
            rows.append([path.name, c.iteration, f"{c.epoch:.2f}", "" if loss is None else f"{loss:.4f}",
                         c.created_at])
        except CheckpointError as error:
            rows.append([path.name, "damaged", "", "", str(error)])
    print_table(["file", "iteration", "epoch", "last mini-batch loss", "created_at"], rows)

    accuracy_csv = run_dir / "report" / "accuracy.csv"
    problem = lineage.problem(str(run_dir / "lineage" / "EvaluateNetwork.json"), inputs=None)
    if problem:
        raise PipelineError(f"the run in {location} has no report to trust ({problem}): rerun the same "
                            f"`mnist-pipeline run` command to finish it")
    with open(accuracy_csv, newline="") as f:
        epochs = list(csv.DictReader(f))
    print("\nper-epoch accuracy:")
    columns = ["epoch", "iteration", "train_accuracy", "test_accuracy", "train_loss", "test_loss"]
    print_table(columns, [[_short(row[c]) for c in columns] for row in epochs])
    return 0


def print_table(columns, rows):
    widths = [max([len(str(c))] + [len(str(r[i])) for r in rows]) for i, c in enumerate(columns)]
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))


def _short(value):
    """Floats with four decimals for tables; everything else as it is."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return value if float(number).is_integer() and "." not in str(value) else f"{number:.4f}"


# --- predict ---

@_removing_copies
def predict_command(args, keep):
    from pipeline.predict import predict

    return predict(_local_copy(args.model, keep), args.inputs, fmt=args.format, summary=args.summary,
                   framing=args.framing)


# --- gc ---

def gc_command(args):
    from pipeline import gc, storage

    found = gc.survey(storage.parse(args.artifacts_dir, "artifacts_dir"), storage.parse(args.data_dir, "data_dir"),
                      args.cache_dir)
    print(gc.format_usage(gc.usage(found)))
    items = gc.plan(found, keep_runs=args.keep_runs, checkpoints=args.checkpoints,
                    cache_days=args.cache_days if args.cache_dir is not None else None)
    print()
    print(gc.format_plan(items))
    if items and not args.yes:
        print("\n(a dry run: nothing was removed; add --yes to remove the above)")
    elif items:
        print(f"\nremoved {len(items)} item(s), {gc.human_size(gc.remove(items))} freed")
    return 0


# --- diff ---

@_removing_copies
def diff_command(args, keep):
    from pipeline import storage

    artifacts_dir = storage.parse(args.artifacts_dir, "artifacts_dir")
    reports = [_finished_report(_run_location(text, artifacts_dir)) for text in (args.run_a, args.run_b)]
    names = [r["run_id"] for r in reports]
    params = [r["hyperparameters"] for r in reports]
    differing = [[key, str(params[0].get(key, "")), str(params[1].get(key, ""))]
                 for key in dict.fromkeys([*params[0], *params[1]]) if params[0].get(key) != params[1].get(key)]
    print("parameters that differ:" if differing else "no parameter differs")
    if differing:
        print_table(["parameter", names[0], names[1]], differing)
    print("\nfinal figures:")
    keys = ["train_accuracy", "test_accuracy", "train_loss", "test_loss", "iteration", "epoch"]
    rows = [[key, _short(reports[0]["final"][key]), _short(reports[1]["final"][key]),
             _short(reports[1]["final"][key] - reports[0]["final"][key])] for key in keys]
    print_table(["figure", names[0], names[1], "b - a"], rows)
    return 0


def _finished_report(run_location):
    """report.json of a finished run, read from the bytes its record vouches for."""
    from pipeline import storage

    record_location = storage.join(run_location, "lineage", "EvaluateNetwork.json")
    record = lineage.read_record(record_location)
    problem = lineage.problem(record_location, inputs=None, record=record) if record else "no record"
    if problem:
        raise PipelineError(f"{run_location} has no report to trust ({problem}): give a finished run")
    location, entry = lineage.files(record_location, record)["report.json"]
    return json.loads(lineage.read_verified(location, entry))


if __name__ == "__main__":
    sys.exit(main())
