"""Runs by name: the identity of a training run, and artifacts/runs.csv, the table of finished runs."""

import csv
import datetime
import hashlib
import io
import json
from pathlib import Path

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
    """Add or replace (same run_id) one row of runs.csv, safe under concurrent writers: they
    take turns on an exclusive lock, and the table is rewritten whole and renamed into place.
    Keys that are not columns are ignored; missing ones are left empty."""
    runs_csv = Path(runs_csv)
    row = {key: row.get(key, "") for key in RUN_COLUMNS}
    row["finished_at"] = row["finished_at"] or datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds")
    lock = runs_csv.parent / ".locks" / (runs_csv.name + ".lock")
    with exclusive_lock(lock):
        rows = [r for r in read_runs(runs_csv) if r.get("run_id") != row["run_id"]] + [row]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=RUN_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(runs_csv, out.getvalue())


def read_runs(runs_csv):
    """The rows of runs.csv as dicts of strings ([] when there is none)."""
    runs_csv = Path(runs_csv)
    if not runs_csv.is_file():
        return []
    with open(runs_csv, newline="") as f:
        return list(csv.DictReader(f))
