"""Prometheus metrics of every finished or failed `run`, `sweep` and `mnist-pipeline-luigi`
command, for a monitor to alert on (a job that stopped running, got slower or worse).

luigi.cfg:
    [metrics]
    textfile = /var/lib/prometheus/node-exporter/mnist_pipeline.prom   # node_exporter's textfile collector
    pushgateway = 127.0.0.1:9091                                      # and/or a Pushgateway

Gauges, each labelled command ("run", "sweep", "luigi") and dataset:
    mnist_pipeline_last_success_timestamp_seconds, mnist_pipeline_last_failure_timestamp_seconds
    mnist_pipeline_last_exit_code{run, reason}   reason: success, task_failed, missing_data, ...
    mnist_pipeline_last_duration_seconds         the whole command's wall time
    mnist_pipeline_accuracy{run, split}          split: train, test (and validation where there is one)
    mnist_pipeline_stage_duration_seconds{run, stage}
    mnist_pipeline_reproducible{run}             1/0: the canary's verdict (pipeline/canary.py), where known
A success replaces every series of its command and dataset but the last failure's time; a
failure replaces only the failure's time, exit code and duration, so the last success and
its figures stay until the next success. The textfile is read back, merged and rewritten
whole (atomically, writers taking turns on a lock beside it); the Pushgateway gets a POST,
which replaces the pushed names only, under job="mnist_pipeline", command, dataset.

Written in Prometheus' text format by hand: nothing to install.
"""

import math
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline.atomic import exclusive_lock, write_atomically
from pipeline.logs import logger

JOB = "mnist_pipeline"
HELP = {
    "mnist_pipeline_last_success_timestamp_seconds": "Unix time of the last command that exited 0.",
    "mnist_pipeline_last_failure_timestamp_seconds": "Unix time of the last command that exited non-zero.",
    "mnist_pipeline_last_exit_code": "Exit code of the last command; reason names it.",
    "mnist_pipeline_last_duration_seconds": "Wall time of the last command.",
    "mnist_pipeline_accuracy": "Final accuracy of each run of the last successful command.",
    "mnist_pipeline_stage_duration_seconds": "Seconds each stage of each run took (last successful command).",
    "mnist_pipeline_reproducible": "1 when a dated run's weights are bit-identical to the previous date's, else 0.",
}
FAILURE_NAMES = ("mnist_pipeline_last_failure_timestamp_seconds", "mnist_pipeline_last_exit_code",
                 "mnist_pipeline_last_duration_seconds")
_SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def settings():
    """{"textfile": str or None, "pushgateway": str or None} from luigi.cfg's [metrics]."""
    import luigi.configuration

    config = luigi.configuration.get_config()
    return {key: (config.get("metrics", key, "") or "").strip() or None for key in ("textfile", "pushgateway")}


def exit_reason(code):
    """The name of an exit code: "success", the [retcode] setting it is ("task_failed", ...),
    "bad_parameter" (the CLI's 2), "interrupted" (130) or "exit_<code>"."""
    if code == 0:
        return "success"
    try:
        import luigi.retcodes

        codes = luigi.retcodes.retcode()
        for name in ("unhandled_exception", "scheduling_error", "not_run", "already_running", "task_failed",
                     "missing_data"):
            if getattr(codes, name) == code:
                return name
    except Exception:  # no luigi config to read: the number says it
        pass
    return {2: "bad_parameter", 130: "interrupted"}.get(code, f"exit_{code}")


def run_figures(report, canary_status=None):
    """The figures of one finished run from its report.json content: {run_id, accuracy: {split: x},
    stage_seconds: {stage: s}, reproducible: 1, 0 or None}."""
    final = report.get("final", {})
    accuracy = {split: final[f"{split}_accuracy"] for split in ("train", "validation", "test")
                if isinstance(final.get(f"{split}_accuracy"), (int, float))}
    status = canary_status or (report.get("canary") or {}).get("status")
    reproducible = {"reproducible": 1, "different-bits": 0}.get(status)
    from pipeline.report import stage_seconds

    stages = stage_seconds(report)
    return {"run_id": report.get("run_id", ""), "accuracy": accuracy, "stage_seconds": stages,
            "reproducible": reproducible}


def figures_of(task):
    """run_figures() of every finished run a task stands for: an EvaluateNetwork's own, a
    Sweep's runs'; [] for others or where a report cannot be read."""
    import json

    from pipeline import lineage, storage

    family = task.get_task_family()
    evaluations = [task] if family == "EvaluateNetwork" else list(task.requires()) if family == "Sweep" else []
    found = []
    for evaluation in evaluations:
        try:
            report = json.loads(storage.read_bytes(evaluation.output().location))
            figures = run_figures(report)
            own = lineage.read_record(evaluation.record_location()) or {}  # its own stage
            if isinstance(own.get("seconds"), (int, float)):
                figures["stage_seconds"][evaluation.get_task_family()] = own["seconds"]
            found.append(figures)
        except (OSError, ValueError, AttributeError) as error:
            logger.warning("metrics: no figures for %s (%s)", evaluation, error)
    return found


def series(command, dataset, code, *, started, finished, runs=(), run=""):
    """[(name, labels, value)] of one command's outcome (see the module); runs: run_figures() dicts."""
    base = {"command": command, "dataset": dataset}
    out = [("mnist_pipeline_last_exit_code", {**base, "run": run, "reason": exit_reason(code)}, code),
           ("mnist_pipeline_last_duration_seconds", base, round(finished - started, 3))]
    if code:
        return [("mnist_pipeline_last_failure_timestamp_seconds", base, finished), *out]
    out.insert(0, ("mnist_pipeline_last_success_timestamp_seconds", base, finished))
    for figures in runs:
        labels = {**base, "run": figures["run_id"]}
        out += [("mnist_pipeline_accuracy", {**labels, "split": split}, value)
                for split, value in figures["accuracy"].items()]
        out += [("mnist_pipeline_stage_duration_seconds", {**labels, "stage": stage}, seconds)
                for stage, seconds in figures["stage_seconds"].items()]
        if figures.get("reproducible") is not None:
            out.append(("mnist_pipeline_reproducible", labels, figures["reproducible"]))
    return out


def merge(existing, new):
    """existing series with those `new` replaces removed, then `new`: a series goes when it has
    a name in `new` and the same command and dataset as new's."""
    replaced = {(name, labels.get("command"), labels.get("dataset")) for name, labels, _ in new}
    kept = [(name, labels, value) for name, labels, value in existing
            if (name, labels.get("command"), labels.get("dataset")) not in replaced]
    return kept + list(new)


def render(all_series):
    """Prometheus' text exposition format: # HELP and # TYPE gauge per name, one line per series."""
    lines, by_name = [], {}
    for name, labels, value in all_series:
        by_name.setdefault(name, []).append((labels, value))
    for name in sorted(by_name):
        lines += [f"# HELP {name} {HELP.get(name, name)}", f"# TYPE {name} gauge"]
        for labels, value in by_name[name]:
            text = ",".join(f'{key}="{_escape(str(labels[key]))}"' for key in sorted(labels))
            lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


def parse(text):
    """[(name, labels, value)] of the sample lines of a text-format file; lines it cannot read
    (a damaged or foreign file) are left out."""
    found = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _SERIES.match(line)
        if not match:
            continue
        labels, rest = {}, match.group(3) or ""
        position = 0
        while position < len(rest):
            label = _LABEL.match(rest, position)
            if not label:
                break
            labels[label.group(1)] = _unescape(label.group(2))
            position = label.end()
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        if position >= len(rest.rstrip()):
            found.append((match.group(1), labels, value))
    return found


def _escape(text):
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(text):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def _number(value):
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def write_textfile(path, new):
    """Merge `new` into the textfile at path and rewrite it whole, atomically; concurrent writers
    take turns on a lock file beside it (node_exporter reads only *.prom)."""
    path = Path(path)
    with exclusive_lock(path.with_name(f".{path.name}.lock")):
        try:
            existing = parse(path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            existing = []
        write_atomically(path, render(merge(existing, new)))


def push(address, command, dataset, new, timeout=5.0):
    """POST the series (without their command and dataset labels, which the grouping key
    carries) to a Pushgateway at host:port or http(s)://host:port."""
    base = address if "://" in address else f"http://{address}"
    url = (f"{base.rstrip('/')}/metrics/job/{JOB}/command/{urllib.parse.quote(command, safe='')}"
           f"/dataset/{urllib.parse.quote(dataset, safe='')}")
    body = render([(name, {k: v for k, v in labels.items() if k not in ("command", "dataset")}, value)
                   for name, labels, value in new])
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={"Content-Type": "text/plain; version=0.0.4"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def record(command, dataset, code, *, started, finished=None, runs=(), run="", config=None):
    """Write one command's metrics where luigi.cfg's [metrics] (or config) says; never raises:
    a monitor's trouble is logged and does not change the command's exit code."""
    config = settings() if config is None else config
    if not (config.get("textfile") or config.get("pushgateway")):
        return []
    new = series(command, dataset or "unknown", code, started=started,
                 finished=time.time() if finished is None else finished, runs=runs, run=run)
    if config.get("textfile"):
        try:
            write_textfile(config["textfile"], new)
        except OSError as error:
            logger.warning("metrics: cannot write %s (%s)", config["textfile"], error)
    if config.get("pushgateway"):
        try:
            push(config["pushgateway"], command, dataset or "unknown", new)
        except (OSError, ValueError) as error:
            logger.warning("metrics: cannot push to %s (%s)", config["pushgateway"], error)
    return new


def recorded(handler, build_task):
    """A CLI handler(args) -> exit code that also records its outcome (see record()): the
    command is "sweep" for args.task_class Sweep, else "run"; an exception counts as a failure
    (2 for a bad parameter, 130 for ^C, 1 otherwise) and is raised on."""
    import functools

    from pipeline.errors import ParameterError

    @functools.wraps(handler)
    def wrapper(args):
        started, code, task = time.time(), 1, None
        try:
            task = build_task(args)
            code = handler(args)
            return code
        except (ParameterError, ValueError):
            code = 2
            raise
        except KeyboardInterrupt:
            code = 130
            raise
        finally:
            try:
                command = "sweep" if getattr(args, "task_class", "") == "Sweep" else "run"
                dataset = getattr(task, "dataset", None) or getattr(args, "dataset", None)
                run = getattr(task, "sweep_id", None) or getattr(task, "run_id", "") if task is not None else ""
                record(command, dataset, code, started=started,
                       runs=figures_of(task) if code == 0 and task is not None else (), run=run)
            except Exception as error:  # a monitor's trouble never changes the command's outcome
                logger.warning("metrics: not recorded (%s)", error)

    return wrapper
