"""Comparison of the runs of a sweep: summary.csv, summary.md, test_accuracy.svg and
index.html, from each run's report.json (as pipeline.report writes it)."""

import csv
import io
from pathlib import Path

from pipeline import pages
from pipeline.atomic import write_atomically

SWEPT = ("hidden_size", "learning_rate", "batch_size", "seed")
COLUMNS = ("run_id",) + SWEPT + ("iterations", "dtype", "sampling", "final_train_accuracy",
                                  "final_test_accuracy", "best_test_accuracy", "best_epoch")


def summary_rows(reports):
    """One row per run, best final test accuracy first. The best epoch is chosen on the test
    set (there is no validation split): a figure to compare runs by, not an unbiased estimate."""
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


def write_sweep_summary(directory, sweep_id, reports):
    """Write the sweep's files into `directory`; returns (rows, {name: path})."""
    directory = Path(directory)
    rows = summary_rows(reports)
    curves = {r["run_id"]: [[e["epoch"], e["test_accuracy"]] for e in r["epochs"]] for r in reports}
    finished = {r["run_id"]: r.get("created_at") or "" for r in reports}
    shown = [{**row, "curve": curves[row["run_id"]], "dataset": reports[0]["dataset"],
              "finished_at": finished[row["run_id"]], "href": f"../../{row['run_id']}/report/index.html"}
             for row in rows]
    files = {"test_accuracy.svg": pages.sweep_plot(shown, standalone=True), "summary.md": _markdown(sweep_id, rows),
             "index.html": pages.sweep_page(sweep_id, shown), "summary.csv": _csv(rows)}
    for name, content in files.items():
        write_atomically(directory / name, content)
    return rows, {name: directory / name for name in files}


def _csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _markdown(sweep_id, rows):
    lines = [f"# Sweep {sweep_id}", "", f"{len(rows)} runs, best final test accuracy first.", "",
             "| rank | hidden | learning rate | batch | seed | train acc | test acc "
             "| best test acc (epoch; chosen on the test set) | run |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for rank, row in enumerate(rows, 1):
        lines.append(
            f"| {rank} | {row['hidden_size']} | {row['learning_rate']:g} | {row['batch_size']} | {row['seed']} "
            f"| {row['final_train_accuracy']:.4f} | {row['final_test_accuracy']:.4f} "
            f"| {row['best_test_accuracy']:.4f} ({row['best_epoch']:.2f}) | `{row['run_id']}` |")
    return "\n".join(lines) + "\n"
