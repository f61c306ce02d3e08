"""Comparison of the runs of a sweep: summary.csv, summary.md, test_accuracy.svg and
index.html, from each run's report.json (as pipeline.report writes it).

With a validation split (every run holding out the same images: same dataset,
validation_size and split_seed) the runs are ranked by their best validation accuracy, each
run's epoch is the one of that best (the checkpoint best.h5 holds), and the test accuracy
reported is that epoch's: the test set is read for reporting only. Without one, as the book
trains, the best epoch is chosen on the test set itself, and the summary says so.
"""

import csv
import io
from pathlib import Path

from pipeline import pages
from pipeline.atomic import write_atomically
from pipeline.training import best_epoch

SWEPT = ("hidden_size", "learning_rate", "batch_size", "seed")
COLUMNS = ("run_id",) + SWEPT + ("iterations", "dtype", "sampling", "final_train_accuracy",
                                  "final_test_accuracy", "best_test_accuracy", "best_epoch")
VALIDATION_COLUMNS = ("run_id",) + SWEPT + (
    "iterations", "dtype", "sampling", "validation_size", "split_seed", "patience", "best_validation_accuracy",
    "best_validation_loss", "best_epoch", "best_iteration", "test_accuracy_at_best_epoch", "trained_epochs",
    "final_train_accuracy", "final_test_accuracy")
SPLIT = ("dataset", "validation_size", "split_seed")  # what makes two runs' held-out images the same


def has_validation(reports):
    """Whether the runs hold out a validation split: all of them (True) or none (False).
    ValueError for a mixture, or for runs holding out different images."""
    with_split = [bool(r["epochs"]) and "validation_accuracy" in r["epochs"][0] for r in reports]
    if any(with_split) != all(with_split):
        raise ValueError("some runs of the sweep hold out a validation split and some do not: rank them in "
                         "separate sweeps, or give every run the same --validation-size")
    splits = {tuple(r["hyperparameters"].get(k) for k in SPLIT) for r in reports}
    if any(with_split) and len(splits) > 1:
        raise ValueError(f"the runs hold out different validation images ({sorted(map(str, splits))}): "
                         f"give every run the same --validation-size and --split-seed")
    return bool(reports) and all(with_split)


def summary_rows(reports):
    """One row per run, best first. With a validation split (VALIDATION_COLUMNS): ranked by best
    validation accuracy, then lower validation loss at that epoch, then run_id; each run's epoch
    is the earliest of its best validation accuracy, and test_accuracy_at_best_epoch is the
    test accuracy of exactly that (run, epoch). Without (COLUMNS): ranked by final test
    accuracy; best_test_accuracy and best_epoch are chosen on the test set itself, a figure to
    compare runs by, not an unbiased estimate."""
    if has_validation(reports):
        return sorted((_validation_row(m) for m in reports),
                      key=lambda row: (-row["best_validation_accuracy"], row["best_validation_loss"], row["run_id"]))
    rows = []
    for metrics in reports:
        params = metrics["hyperparameters"]
        best = max(metrics["epochs"], key=lambda row: row["test_accuracy"])
        rows.append({
            "run_id": metrics["run_id"], **{key: params[key] for key in SWEPT},
            "iterations": params["iterations"], "dtype": params["dtype"], "sampling": params["sampling"],
            "final_train_accuracy": metrics["final"]["train_accuracy"],
            "final_test_accuracy": metrics["final"]["test_accuracy"],
            "best_test_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
        })
    return sorted(rows, key=lambda row: (-row["final_test_accuracy"], row["run_id"]))


def _validation_row(metrics):
    params = metrics["hyperparameters"]
    best = best_epoch(metrics["epochs"])  # the rule training used to name best.h5
    return {
        "run_id": metrics["run_id"], **{key: params[key] for key in SWEPT},
        "iterations": params["iterations"], "dtype": params["dtype"], "sampling": params["sampling"],
        "validation_size": params["validation_size"], "split_seed": params["split_seed"],
        "patience": params.get("patience", 0),
        "best_validation_accuracy": best["validation_accuracy"], "best_validation_loss": best["validation_loss"],
        "best_epoch": best["epoch"], "best_iteration": best["iteration"],
        "test_accuracy_at_best_epoch": best["test_accuracy"], "trained_epochs": metrics["final"]["epoch"],
        "final_train_accuracy": metrics["final"]["train_accuracy"],
        "final_test_accuracy": metrics["final"]["test_accuracy"],
    }


def write_sweep_summary(directory, sweep_id, reports):
    """Write the sweep's files into `directory`; returns (rows, {name: path})."""
    directory = Path(directory)
    rows = summary_rows(reports)
    split = has_validation(reports)
    curves = {r["run_id"]: [[e["epoch"], e["test_accuracy"]] for e in r["epochs"]] for r in reports}
    finished = {r["run_id"]: r.get("created_at") or "" for r in reports}
    shown = [{**row, "curve": curves[row["run_id"]], "dataset": reports[0]["dataset"],
              "finished_at": finished[row["run_id"]], "href": f"../../{row['run_id']}/report/index.html"}
             for row in rows]
    files = {"test_accuracy.svg": pages.sweep_plot(shown, standalone=True),
             "summary.md": _validation_markdown(sweep_id, rows) if split else _markdown(sweep_id, rows),
             "index.html": pages.sweep_page(sweep_id, shown),
             "summary.csv": _csv(rows, VALIDATION_COLUMNS if split else COLUMNS)}
    for name, content in files.items():
        write_atomically(directory / name, content)
    return rows, {name: directory / name for name in files}


def _csv(rows, columns):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _markdown(sweep_id, rows):
    lines = [f"# Sweep {sweep_id}", "", f"{len(rows)} runs, best final test accuracy first.", "",
             "There is no validation split: the best epoch below is chosen on the test set itself, so its "
             "accuracy overstates how that model does on new data. Give the sweep `--validation-size N` "
             "(e.g. 5000) to choose runs and epochs on held-out training images instead.", "",
             "| rank | hidden | learning rate | batch | seed | train acc | test acc "
             "| best test acc (epoch; chosen on the test set) | run |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for rank, row in enumerate(rows, 1):
        lines.append(
            f"| {rank} | {row['hidden_size']} | {row['learning_rate']:g} | {row['batch_size']} | {row['seed']} "
            f"| {row['final_train_accuracy']:.4f} | {row['final_test_accuracy']:.4f} "
            f"| {row['best_test_accuracy']:.4f} ({row['best_epoch']:.2f}) | `{row['run_id']}` |")
    return "\n".join(lines) + "\n"


def _validation_markdown(sweep_id, rows):
    first = rows[0] if rows else {"validation_size": 0, "split_seed": 0}
    lines = [f"# Sweep {sweep_id}", "",
             f"{len(rows)} runs, ranked by their best validation accuracy on the same "
             f"{first['validation_size']} training images held out of training (split seed {first['split_seed']}). "
             "Each run's epoch is the one of its best validation accuracy (its best.h5); the test accuracy is "
             "that epoch's, read for reporting only: the test set chose neither the run nor the epoch.", "",
             "| rank | hidden | learning rate | batch | seed | best validation acc | epoch "
             "| test acc at that epoch (chosen on validation) | final test acc (epoch) | run |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for rank, row in enumerate(rows, 1):
        lines.append(
            f"| {rank} | {row['hidden_size']} | {row['learning_rate']:g} | {row['batch_size']} | {row['seed']} "
            f"| {row['best_validation_accuracy']:.4f} | {row['best_epoch']:.2f} "
            f"| {row['test_accuracy_at_best_epoch']:.4f} "
            f"| {row['final_test_accuracy']:.4f} ({row['trained_epochs']:.2f}) | `{row['run_id']}` |")
    return "\n".join(lines) + "\n"
