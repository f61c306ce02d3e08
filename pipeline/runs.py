"""Runs by name: the identity of a training run, and the tables of finished runs:
artifacts/runs.csv and artifacts/index.html (the same runs as a page)."""

import csv
import datetime
import hashlib
import io
import json
import logging
import os
import re
import socket

from pipeline import pages, storage

logger = logging.getLogger("luigi-interface")
_RUN_ID = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*")

RUN_COLUMNS = ("run_id", "dataset", "hidden_size", "batch_size", "learning_rate", "iterations", "weight_init_std",
               "seed", "dtype", "sampling", "date", "train_accuracy", "test_accuracy", "report_sha256",
               "finished_at", "validation_size", "best_validation_accuracy", "best_epoch",
               "test_accuracy_at_best_epoch")


IDENTITY = ("dataset", "hidden_size", "batch_size", "learning_rate", "iterations", "weight_init_std", "dtype",
            "sampling", "seed")
_WHOLE = ("hidden_size", "batch_size", "iterations", "seed", "validation_size", "split_seed", "patience")


def identity(values):
    """The parameters that change a run's result (its name's hash covers exactly these), from a
    mapping of the run's parameter values, as Python values or as the strings luigi stores:
    the nine always, the date when set, the validation split when it holds images out, the
    patience when it stops early. ValueError for a value of the wrong kind."""
    def value(key):
        raw = values[key]
        if isinstance(raw, str) and key in _WHOLE:
            return int(raw)
        if isinstance(raw, str) and key in ("learning_rate", "weight_init_std"):
            return float(raw)
        return raw

    found = {key: value(key) for key in IDENTITY}
    date = values.get("date")
    if date:
        found["date"] = date.isoformat() if hasattr(date, "isoformat") else str(date)
    if int(values.get("validation_size") or 0):  # absent at 0: the runs without a split keep their names
        found.update(validation_size=value("validation_size"), split_seed=value("split_seed"))
    if int(values.get("patience") or 0):
        found["patience"] = value("patience")
    return found


def run_name(params):
    """`h50-b100-lr0.1-s0-3fa9c2d1`: the main hyperparameters and a hash of every key of params
    (all that changes the result), so any changed value gives a new name."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]
    slug = "h{hidden_size}-b{batch_size}-lr{learning_rate:g}-s{seed}".format(**params)
    if params.get("date"):
        slug += "-" + params["date"]
    return f"{slug}-{digest}"


def lock_name(family, dataset, name):
    """The name of the lease a run's (or sweep's) task takes in <artifacts>/.locks/."""
    return f"{family}_{dataset}_{name}"


def sweep_name(run_ids):
    """`sweep-1a2b3c4d`: a hash of the set of runs a sweep compares."""
    canonical = json.dumps(sorted(set(run_ids)), separators=(",", ":"))
    return "sweep-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]


def add_run(artifacts_dir, row, *, lease_seconds=60.0):
    """Add or replace (same run_id) the run's row of <artifacts_dir>/runs.csv, then rewrite
    index.html beside it; artifacts_dir is a directory or a bucket location. Concurrent writers
    never lose a row (storage.update), and the page is written under a lease by each writer in
    turn from the rows as they are then. Keys that are not columns are ignored; missing ones are
    empty. A malformed row already there is dropped with a warning."""
    row = {key: row.get(key, "") for key in RUN_COLUMNS}
    row["finished_at"] = row["finished_at"] or now()

    def change(old):
        rows = [r for r in _parse(old, artifacts_dir) if r["run_id"] != row["run_id"]] + [row]
        return _csv(rows)

    storage.update(storage.join(artifacts_dir, "runs.csv"), change)
    write_index(artifacts_dir, lease_seconds=lease_seconds)


def drop_runs(artifacts_dir, run_ids):
    """Remove these runs' rows from runs.csv (and rewrite index.html); the others stay."""
    gone = set(run_ids)
    storage.update(storage.join(artifacts_dir, "runs.csv"),
                   lambda old: _csv([r for r in _parse(old, artifacts_dir) if r["run_id"] not in gone]))
    write_index(artifacts_dir)


def write_index(artifacts_dir, *, lease_seconds=60.0):
    """<artifacts_dir>/index.html from runs.csv as it is now, written by one writer at a time."""
    owner = f"{socket.gethostname()}:{os.getpid()}"
    with storage.Lease(storage.join(artifacts_dir, ".locks", "index.html"), owner, ttl_seconds=lease_seconds) as lease:
        rows = read_runs(artifacts_dir)
        storage.write_bytes(storage.join(artifacts_dir, "index.html"), index_html(artifacts_dir, rows), lease=lease)


def read_runs(artifacts_dir):
    """The rows of <artifacts_dir>/runs.csv as dicts of strings ([] when there is none), one
    read; a malformed row is skipped with a warning."""
    try:
        content = storage.read_bytes(storage.join(artifacts_dir, "runs.csv"))
    except FileNotFoundError:
        return []
    return _parse(content, artifacts_dir)


def find_run(artifacts_dir, run_id):
    """The row of run_id in the runs index, or None."""
    return next((row for row in read_runs(artifacts_dir) if row["run_id"] == run_id), None)


def _parse(content, artifacts_dir):
    if not content:
        return []
    text = content.decode("utf-8", errors="replace")  # a row that is not UTF-8 fails the checks below
    rows = []
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    for number, values in enumerate(reader, start=2):
        row = dict(zip(header or [], values))
        if not header or len(values) != len(header) or not _RUN_ID.fullmatch(row.get("run_id") or "") \
                or not _RUN_ID.fullmatch(row.get("dataset") or ""):
            logger.warning("runs.csv in %s, line %d: not a run's row; skipped", artifacts_dir, number)
            continue
        rows.append({key: row.get(key, "") for key in RUN_COLUMNS})
    return rows


def _csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RUN_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds")


def index_html(artifacts_dir, rows):
    """artifacts/index.html for these runs (their curves read from the reports under artifacts_dir)
    and the sweeps of their datasets."""
    return pages.index_page([page_row(artifacts_dir, row) for row in rows], sweeps=sweep_rows(artifacts_dir, rows))


def sweep_rows(artifacts_dir, rows):
    """The sweeps in <artifacts_dir>/<dataset>/sweeps/ of the runs' datasets, as pages.index_page
    lists them: the best run is the first row of the sweep's summary.csv; finished when its
    last run finished. A damaged summary is left out. artifacts_dir: a location."""
    finished = {row["run_id"]: row.get("finished_at") or "" for row in rows}
    found = []
    for dataset in sorted({row["dataset"] for row in rows if row.get("dataset")}):
        root = storage.join(artifacts_dir, dataset, "sweeps")
        for name in storage.listing(root):
            sweep_id, _, file = name.partition("/")
            if file != "summary.csv":
                continue
            try:
                summary = list(csv.DictReader(io.StringIO(storage.read_bytes(storage.join(root, name)).decode())))
            except (OSError, ValueError):
                continue
            if not summary or "run_id" not in summary[0]:
                continue
            times = [finished.get(r["run_id"], "") for r in summary]
            validated = summary[0].get("test_accuracy_at_best_epoch") not in (None, "")
            found.append({"sweep_id": sweep_id, "dataset": dataset, "run_count": len(summary),
                          "best_run_id": summary[0]["run_id"], "chosen_on": "validation" if validated else "test",
                          "best_test_accuracy": _number(summary[0].get(
                              "test_accuracy_at_best_epoch" if validated else "final_test_accuracy")),
                          "finished_at": max(times) if all(times) else "",
                          "href": f"{dataset}/sweeps/{sweep_id}/index.html"})
    return found


def page_row(artifacts_dir, row):
    """A runs.csv row as the pages show it: numbers as numbers, the run's page and its curve.
    artifacts_dir: a location."""
    report_json = storage.join(artifacts_dir, row["dataset"], row["run_id"], "report", "report.json")
    try:
        epochs = json.loads(storage.read_bytes(report_json))["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        epochs = []
    shown = {key: _number(value) for key, value in row.items()}
    return {**shown, "final_train_accuracy": shown.get("train_accuracy"),
            "final_test_accuracy": shown.get("test_accuracy"),
            "href": f"{row['dataset']}/{row['run_id']}/report/index.html",
            "curve": [[e["epoch"], e["test_accuracy"]] for e in epochs], "curves": pages.curves_of(epochs)}


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) and "e" not in str(value) else number
