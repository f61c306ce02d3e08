"""A run's report: what a person reads, what DVC reads, and the record the HTML pages are made from.

report/ holds report.json (everything below, in one record), index.html (the page a person opens),
metrics.json (the final figures: numbers only, as `dvc metrics show` lists them), params.json (what
defines the run), accuracy.csv (one row per epoch), dvc.yaml (how DVC shows them), report.md,
and the plots accuracy.svg, loss.svg and minibatch_loss.svg. Each file is written atomically.
"""

import csv
import io
import json
from pathlib import Path

import numpy as np

from pipeline import __version__, pages
from pipeline.atomic import write_atomically
from pipeline.evaluation import epoch_columns

CLASS_NAMES = {
    "mnist": [str(k) for k in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}
FILES = ("report.json", "metrics.json", "params.json", "accuracy.csv", "dvc.yaml", "report.md", "accuracy.svg",
         "loss.svg", "minibatch_loss.svg", "index.html")
DVC_YAML = """# `dvc metrics show`, `dvc params diff` and `dvc plots show` read this run's report from here.
metrics:
  - metrics.json
params:
  - params.json
plots:
  - accuracy.csv:
      x: epoch
      y: [train_accuracy, test_accuracy]
      title: Accuracy per epoch
"""


def class_names(dataset, n_classes):
    """The names of a dataset's classes where known, else "0", "1", ..."""
    names = CLASS_NAMES.get(dataset)
    return list(names) if names and len(names) == n_classes else [str(k) for k in range(n_classes)]


def per_class_accuracy(confusion):
    """Recall of each class: diagonal over row sums; None for a class with no samples."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    return [float(confusion[k, k] / totals[k]) if totals[k] else None for k in range(confusion.shape[0])]


def build_report(*, run_id, dataset, hyperparameters, epochs, confusion, minibatch_losses, gradient_check=None,
                 digests=None, checkpoints=(), stage_seconds=None, created_at=""):
    """The content of report.json, every figure taken from the arguments.

    epochs: rows with EPOCH_COLUMNS, oldest first, the last the final model; confusion:
    (classes, classes) counts, rows the true class; minibatch_losses (iterations,).
    ValueError for no rows, a row lacking a column, or a non-square confusion matrix."""
    rows = [_epoch_row(k, row) for k, row in enumerate(epochs)]
    if not rows:
        raise ValueError("no epochs to report: evaluate at least one checkpoint")
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {confusion.shape}")
    return {
        "run_id": run_id, "dataset": dataset, "class_names": class_names(dataset, confusion.shape[0]),
        "hyperparameters": dict(hyperparameters), "final": dict(rows[-1]), "epochs": rows,
        "minibatch_loss": [float(v) for v in np.asarray(minibatch_losses, dtype=np.float64)],
        "confusion_matrix": confusion.astype(int).tolist(), "per_class_accuracy": per_class_accuracy(confusion),
        "gradient_check": gradient_check or {}, "digests": digests or {}, "checkpoints": list(checkpoints),
        "stage_seconds": stage_seconds or {}, "created_at": created_at, "package_version": __version__,
    }


def write_report(report_dir, report):
    """Write the report's files into report_dir; returns {name: path} of what was written."""
    report_dir = Path(report_dir)
    run_id, epochs = report["run_id"], report["epochs"]
    final = {key: report["final"][key] for key in epoch_columns(epochs)}
    contents = {
        **pages.plots(report),
        "accuracy.csv": _epochs_csv(epochs),
        "report.md": _markdown(report),
        "metrics.json": _json({"final": final}),
        "params.json": _json({"run_id": run_id, **report["hyperparameters"]}),
        "dvc.yaml": DVC_YAML,
        "report.json": _json(report),
        "index.html": pages.run_page(report),
    }
    for name in FILES:
        write_atomically(report_dir / name, contents[name])
    return {name: report_dir / name for name in FILES}


def read_report(report_dir):
    """report.json of a finished run, as written."""
    return json.loads((Path(report_dir) / "report.json").read_text())


def _json(obj):
    return json.dumps(obj, indent=2) + "\n"


def _epoch_row(index, row):
    columns = epoch_columns([row])  # and the validation figures, when the run has a validation split
    try:
        return {key: int(row[key]) if key == "iteration" else float(row[key]) for key in columns}
    except KeyError as error:
        raise ValueError(f"epoch row {index} lacks {error}; rows need {', '.join(columns)}") from None


def _epochs_csv(epochs):
    columns = epoch_columns(epochs)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in epochs:
        writer.writerow({key: (f"{row[key]:.6g}" if key == "epoch" else row[key]) for key in columns})
    return out.getvalue()


def _markdown(report):
    final, params, names = report["final"], report["hyperparameters"], report["class_names"]
    lines = [
        f"# Run {report['run_id']}", "",
        f"Dataset **{report['dataset']}**. Final model (iteration {final['iteration']}, epoch "
        f"{final['epoch']:.2f}): train accuracy **{final['train_accuracy']:.4f}**, "
        f"test accuracy **{final['test_accuracy']:.4f}** (test-set loss {final['test_loss']:.4f}).", "",
        "![accuracy per epoch](accuracy.svg)", "", "![loss per epoch](loss.svg)", "",
        "![mini-batch loss](minibatch_loss.svg)", "",
        "## Parameters", "", *[f"- {key}: {value}" for key, value in params.items()], "",
        "## Accuracy per epoch", "",
        "Accuracy and mean cross-entropy over the whole training and test sets at each checkpoint.", "",
        "| epoch | iteration | train accuracy | test accuracy | train-set loss | test-set loss |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {row['epoch']:.2f} | {row['iteration']} | {row['train_accuracy']:.4f} | {row['test_accuracy']:.4f} "
          f"| {row['train_loss']:.4f} | {row['test_loss']:.4f} |" for row in report["epochs"]], "",
        "## Test accuracy per class (final model)", "", "| class | accuracy |", "| --- | ---: |",
        *[f"| {name} | {'n/a' if value is None else f'{value:.4f}'} |"
          for name, value in zip(names, report["per_class_accuracy"])], "",
        "## Confusion matrix (rows: true class, columns: predicted)", "",
        "| true \\ predicted | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names),
        *[f"| {name} | " + " | ".join(str(c) for c in counts) + " |"
          for name, counts in zip(names, report["confusion_matrix"])], "",
    ]
    return "\n".join(lines)
