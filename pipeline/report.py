"""A run's evaluation report, and artifacts/runs.csv, the table of all runs.

report/ holds metrics.json (final figures, per-epoch list, parameters, checksums, per-class
accuracy, confusion matrix), accuracy.csv, report.md, accuracy.png and loss.png. Each file
is written atomically; metrics.json comes last because its presence marks the report
complete. JSON and CSV are shaped for `dvc metrics show` and `dvc plots show`.
"""

import csv
import datetime
import io
import json
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.atomic import exclusive_lock, write_atomically

EPOCH_COLUMNS = ("epoch", "iteration", "train_accuracy", "test_accuracy", "train_loss", "test_loss")
FIGURES_VERSION = 1


def epoch_figures_path(figures_dir, iteration):
    """Where the per-epoch figures of the checkpoint at `iteration` are kept: <run>/evaluation/iter-NNNNNNNN.json."""
    return Path(figures_dir) / f"iter-{iteration:08d}.json"


def write_epoch_figures(figures_dir, row, params_sha256):
    """Keep one evaluated checkpoint's row with the digest of the weights it came from (atomically)."""
    kept = {**_epoch_row(row["iteration"], row), "params_sha256": params_sha256, "format_version": FIGURES_VERSION}
    write_atomically(epoch_figures_path(figures_dir, row["iteration"]), json.dumps(kept, indent=2) + "\n")


def read_epoch_figures(figures_dir, iteration, params_sha256):
    """The row kept for the checkpoint at `iteration` if it was computed from weights with this
    digest, else None.

    A missing, unreadable or foreign file is None, not an error: the figures are a cache
    that EvaluateNetwork recomputes from the checkpoint."""
    try:
        kept = json.loads(epoch_figures_path(figures_dir, iteration).read_text())
        if kept.get("params_sha256") != params_sha256 or kept.get("format_version") != FIGURES_VERSION:
            return None
        return _epoch_row(iteration, kept)
    except (OSError, ValueError, TypeError, AttributeError):  # _epoch_row's missing key is a ValueError
        return None


RUN_COLUMNS = ("run_id", "dataset", "hidden_size", "batch_size", "learning_rate", "iterations", "weight_init_std",
               "seed", "dtype", "sampling", "date", "train_accuracy", "test_accuracy", "finished_at")


def per_class_accuracy(confusion):
    """Recall of each class: diagonal over row sums; None for a class with no samples."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    return [float(confusion[k, k] / totals[k]) if totals[k] else None for k in range(confusion.shape[0])]


def build_metrics(*, run_id, dataset, hyperparameters, data_checksums, epochs, confusion, class_names=None):
    """The content of metrics.json, all figures taken from the arguments.

    epochs: rows with the keys of EPOCH_COLUMNS, oldest first; the last is the final model.
    confusion: (classes, classes) counts, rows the true class, columns the predicted one.
    Numbers become plain int/float (numpy scalars are not JSON); ValueError on rows that
    lack a key, no rows, a non-square matrix, or class_names of the wrong length.
    """
    rows = [_epoch_row(k, row) for k, row in enumerate(epochs)]
    if not rows:
        raise ValueError("no epochs to report: evaluate at least one checkpoint")
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {confusion.shape}")
    names = [str(name) for name in class_names] if class_names else [str(k) for k in range(confusion.shape[0])]
    if len(names) != confusion.shape[0]:
        raise ValueError(f"{len(names)} class names for a {confusion.shape[0]}-class confusion matrix")
    return {
        "run_id": run_id,
        "dataset": dataset,
        "final": dict(rows[-1]),
        "epochs": rows,
        "per_class_accuracy": dict(zip(names, per_class_accuracy(confusion))),
        "confusion_matrix": confusion.astype(int).tolist(),
        "hyperparameters": hyperparameters,
        "data_checksums": data_checksums,
        "created_at": _now(),
        "package_version": __version__,
    }


def write_report(report_dir, *, run_id, dataset, hyperparameters, data_checksums, epochs, minibatch_losses,
                 confusion, class_names=None):
    """Write the five report files into report_dir; returns the metrics dict.

    minibatch_losses: (iterations,) float, the loss of every training iteration, for loss.png.
    The inputs are checked before any file is touched (see build_metrics).
    """
    report_dir = Path(report_dir)
    metrics = build_metrics(run_id=run_id, dataset=dataset, hyperparameters=hyperparameters,
                            data_checksums=data_checksums, epochs=epochs, confusion=confusion,
                            class_names=class_names)
    epochs = metrics["epochs"]
    report_dir.mkdir(parents=True, exist_ok=True)
    # metrics.json marks the report complete: drop an old one first, so that a rewrite that
    # fails half way never leaves the marker vouching for a mix of old and new files
    (report_dir / "metrics.json").unlink(missing_ok=True)
    write_atomically(report_dir / "accuracy.csv", _epochs_csv(epochs))
    write_atomically(report_dir / "accuracy.png", _accuracy_plot(epochs, run_id))
    write_atomically(report_dir / "loss.png", _loss_plot(np.asarray(minibatch_losses), epochs, run_id))
    write_atomically(report_dir / "report.md", _markdown(metrics))
    write_atomically(report_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def append_run(runs_csv, row):
    """Add or replace (same run_id) one row of runs.csv, safely with concurrent writers.

    An exclusive lock on runs.csv.lock serialises writers across processes; the table is
    rewritten to a temporary file and renamed, so a reader never sees half a file. Keys
    of `row` that are not columns are ignored; missing ones are left empty.
    """
    runs_csv = Path(runs_csv)
    runs_csv.parent.mkdir(parents=True, exist_ok=True)
    row = {key: row.get(key, "") for key in RUN_COLUMNS}
    row["finished_at"] = row["finished_at"] or _now()
    with exclusive_lock(runs_csv.with_name(runs_csv.name + ".lock")):
        rows = [r for r in read_runs(runs_csv) if r.get("run_id") != row["run_id"]] + [row]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=RUN_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(runs_csv, out.getvalue())


def read_runs(runs_csv):
    """The rows of runs.csv as dicts of strings ([] when it does not exist)."""
    runs_csv = Path(runs_csv)
    if not runs_csv.exists():
        return []
    with open(runs_csv, newline="") as f:
        return list(csv.DictReader(f))


def _epoch_row(index, row):
    try:
        return {key: int(row[key]) if key == "iteration" else float(row[key]) for key in EPOCH_COLUMNS}
    except KeyError as error:
        raise ValueError(f"epoch row {index} lacks {error}; rows need {', '.join(EPOCH_COLUMNS)}") from None


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _epochs_csv(epochs):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EPOCH_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in epochs:
        writer.writerow({key: (f"{row[key]:.6g}" if key == "epoch" else row[key]) for key in EPOCH_COLUMNS})
    return out.getvalue()


def _markdown(metrics):
    final, params = metrics["final"], metrics["hyperparameters"]
    lines = [
        f"# Run {metrics['run_id']}", "",
        f"Dataset **{metrics['dataset']}**. Final model (iteration {final['iteration']}, epoch "
        f"{final['epoch']:.2f}): train accuracy **{final['train_accuracy']:.4f}**, "
        f"test accuracy **{final['test_accuracy']:.4f}** (test loss {final['test_loss']:.4f}).", "",
        "## Parameters", "",
        *[f"- {key}: {value}" for key, value in params.items()], "",
        "## Accuracy per epoch", "",
        "Accuracy and mean cross-entropy over the whole training and test sets at each checkpoint.", "",
        "| epoch | iteration | train accuracy | test accuracy | train loss | test loss |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {row['epoch']:.2f} | {row['iteration']} | {row['train_accuracy']:.4f} | {row['test_accuracy']:.4f} "
          f"| {row['train_loss']:.4f} | {row['test_loss']:.4f} |" for row in metrics["epochs"]], "",
        "## Test accuracy per class (final model)", "",
        "| class | accuracy |", "| --- | ---: |",
        *[f"| {name} | {'n/a' if value is None else f'{value:.4f}'} |"
          for name, value in metrics["per_class_accuracy"].items()], "",
        "## Confusion matrix (rows: true class, columns: predicted)", "",
    ]
    names = list(metrics["per_class_accuracy"])
    lines.append("| true \\ predicted | " + " | ".join(names) + " |")
    lines.append("| --- |" + " ---: |" * len(names))
    for name, counts in zip(names, metrics["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(c) for c in counts) + " |")
    lines += ["", "Plots: `accuracy.png`, `loss.png`. Figures: `metrics.json`, `accuracy.csv`.", ""]
    return "\n".join(lines)


def new_figure():
    """(figure, axes) of the house size; matplotlib without pyplot, so no global state."""
    from matplotlib.figure import Figure  # only writing a plot needs matplotlib: import it late

    figure = Figure(figsize=(8, 5), dpi=100)
    return figure, figure.add_subplot()


def png_bytes(figure):
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _accuracy_plot(epochs, run_id):
    figure, axes = new_figure()
    x = [row["epoch"] for row in epochs]
    axes.plot(x, [row["train_accuracy"] for row in epochs], marker="o", label="train")
    axes.plot(x, [row["test_accuracy"] for row in epochs], marker="s", linestyle="--", label="test")
    axes.set_xlabel("epoch")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.0)
    axes.set_title(f"Accuracy per epoch, {run_id}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    return png_bytes(figure)


def _loss_plot(losses, epochs, run_id):
    figure, axes = new_figure()
    iterations = np.arange(1, losses.size + 1)
    axes.plot(iterations, losses, linewidth=0.5, alpha=0.4, label="mini-batch loss")
    window = max(1, min(100, losses.size // 10))
    if losses.size >= window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes.plot(iterations[window - 1:], smooth, linewidth=1.5, label=f"moving average of {window}")
    axes.plot([row["iteration"] for row in epochs], [row["train_loss"] for row in epochs], "o",
              label="whole training set")
    axes.set_xlabel("iteration")
    axes.set_ylabel("cross-entropy loss")
    axes.set_title(f"Loss, {run_id}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    return png_bytes(figure)
