"""Runs by name: the identity of a training run, and the tables of finished runs:
artifacts/runs.csv and artifacts/index.html (the same runs as a page)."""

import csv
import datetime
import hashlib
import io
import json
from pathlib import Path

from pipeline import pages
from pipeline.atomic import exclusive_lock, write_atomically

RUN_COLUMNS = ("run_id", "dataset", "hidden_size", "batch_size", "learning_rate", "iterations", "weight_init_std",
               "seed", "dtype", "sampling", "date", "train_accuracy", "test_accuracy", "report_sha256",
               "finished_at")


def run_name(params):
    """`h50-b100-lr0.1-s0-3fa9c2d1`: the main hyperparameters and a hash of every key of params
    (all that changes the result), so any changed value gives a new name."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]
    slug = "h{hidden_size}-b{batch_size}-lr{learning_rate:g}-s{seed}".format(**params)
    if params.get("date"):
        slug += "-" + params["date"]
    return f"{slug}-{digest}"


def sweep_name(run_ids):
    """`sweep-1a2b3c4d`: a hash of the set of runs a sweep compares."""
    canonical = json.dumps(sorted(set(run_ids)), separators=(",", ":"))
    return "sweep-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]


def add_run(runs_csv, row):
    """Add or replace (same run_id) one row of runs.csv, and rewrite index.html beside it; safe
    under concurrent writers: they take turns on an exclusive lock, and each file is rewritten
    whole and renamed into place. Keys that are not columns are ignored; missing ones are empty."""
    runs_csv = Path(runs_csv)
    row = {key: row.get(key, "") for key in RUN_COLUMNS}
    row["finished_at"] = row["finished_at"] or now()
    lock = runs_csv.parent / ".locks" / (runs_csv.name + ".lock")
    with exclusive_lock(lock):
        rows = [r for r in read_runs(runs_csv) if r.get("run_id") != row["run_id"]] + [row]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=RUN_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(runs_csv, out.getvalue())
        write_atomically(runs_csv.with_name("index.html"), index_html(runs_csv.parent, rows))


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds")


def index_html(artifacts_dir, rows):
    """artifacts/index.html for these runs (their curves read from the reports under artifacts_dir)."""
    return pages.index_page([page_row(artifacts_dir, row) for row in rows])


def page_row(artifacts_dir, row):
    """A runs.csv row as the pages show it: numbers as numbers, the run's page and its curve.
    artifacts_dir: a local directory or an s3:// location."""
    from pipeline import storage

    report_json = storage.join(artifacts_dir, row["dataset"], row["run_id"], "report", "report.json")
    try:
        epochs = json.loads(storage.read_bytes(report_json))["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        epochs = []
    shown = {key: _number(value) for key, value in row.items()}
    return {**shown, "final_train_accuracy": shown.get("train_accuracy"),
            "final_test_accuracy": shown.get("test_accuracy"),
            "href": f"{row['dataset']}/{row['run_id']}/report/index.html",
            "curve": [[e["epoch"], e["test_accuracy"]] for e in epochs]}


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) and "e" not in str(value) else number


def read_runs(runs_csv):
    """The rows of runs.csv as dicts of strings ([] when there is none)."""
    runs_csv = Path(runs_csv)
    if not runs_csv.is_file():
        return []
    with open(runs_csv, newline="") as f:
        return list(csv.DictReader(f))
