"""A run's report: what a person reads, what DVC reads, and the record the HTML pages are made from.

report/ holds report.json (everything below, in one record), index.html (the page a person opens),
metrics.json (the final figures: numbers only, as `dvc metrics show` lists them), params.json (what
defines the run), accuracy.csv (one row per epoch), dvc.yaml (how DVC shows them), report.md,
and the plots accuracy.svg, loss.svg and minibatch_loss.svg. Each file is written atomically.
"""

import csv
import importlib.metadata
import io
import json
import math
import platform
from pathlib import Path

import numpy as np

from pipeline import __version__, pages
from pipeline.atomic import write_atomically
from pipeline.evaluation import EPOCH_COLUMNS, VALIDATION_COLUMNS

CLASS_NAMES = {
    "mnist": [str(k) for k in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}
FILES = ("report.json", "metrics.json", "params.json", "accuracy.csv", "dvc.yaml", "report.md", "accuracy.svg",
         "loss.svg", "minibatch_loss.svg", "index.html")


def class_names(dataset, n_classes):
    """The names of a dataset's classes where known, else "0", "1", ..."""
    names = CLASS_NAMES.get(dataset)
    return list(names) if names and len(names) == n_classes else [str(k) for k in range(n_classes)]


def per_class_accuracy(confusion):
    """Recall of each class: diagonal over row sums; None for a class with no samples."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    return [float(confusion[k, k] / totals[k]) if totals[k] else None for k in range(confusion.shape[0])]


def per_class_precision(confusion):
    """Precision of each class: diagonal over column sums; None for a class never predicted."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=0)
    return [float(confusion[k, k] / totals[k]) if totals[k] else None for k in range(confusion.shape[0])]


def confident_mistakes(probabilities, labels, images, k=16):
    """The k test images the model gets wrong with the highest confidence, most confident first
    (ties: lower index first).

    probabilities (n, classes) the network's softmax output; labels (n,) integer classes; images
    (n, pixels) floats in [0, 1]. Returns [{"index": row in the test set, "true": class,
    "predicted": class, "confidence": probability of the predicted class, "pixels": the image as
    ints 0-255}], at most k of them. ValueError for arrays that do not line up."""
    probabilities, labels, images = np.asarray(probabilities), np.asarray(labels), np.asarray(images)
    if probabilities.ndim != 2 or labels.ndim != 1 or images.ndim != 2:
        raise ValueError(f"confident_mistakes needs probabilities (n, classes), labels (n,) and images (n, pixels); "
                         f"got shapes {probabilities.shape}, {labels.shape} and {images.shape}")
    if not probabilities.shape[0] == labels.shape[0] == images.shape[0]:
        raise ValueError(f"confident_mistakes: {probabilities.shape[0]} probabilities, {labels.shape[0]} labels and "
                         f"{images.shape[0]} images: give one of each per test image")
    if k < 0:
        raise ValueError(f"confident_mistakes: k={k} must be >= 0")
    predicted = np.argmax(probabilities, axis=1) if probabilities.size else np.empty(0, np.intp)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]].astype(np.float64)
    chosen = wrong[np.lexsort((wrong, -confidence))][:k]
    pixels = np.clip(np.rint(images[chosen].astype(np.float64) * 255), 0, 255).astype(int)
    return [{"index": int(i), "true": int(labels[i]), "predicted": int(predicted[i]),
             "confidence": float(probabilities[i, predicted[i]]), "pixels": p.tolist()}
            for i, p in zip(chosen, pixels)]


def environment():
    """The versions a run used: Python, numpy and its BLAS (as built, and as loaded with its
    threads), h5py and HDF5, luigi. {name: str, "blas": {...}}; a part that cannot be read is "unknown"."""
    import h5py

    try:
        built = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = {"name": str(built.get("name", "unknown")), "version": str(built.get("version", "unknown"))}
    except Exception:  # numpy < 1.26 has no mode="dicts"; the loaded library below still says
        blas = {"name": "unknown", "version": "unknown"}
    try:
        from threadpoolctl import threadpool_info

        loaded = [info for info in threadpool_info() if info.get("user_api") == "blas"]
    except Exception:
        loaded = []
    if loaded:
        blas.update({"loaded": str(loaded[0].get("internal_api")), "loaded_version": str(loaded[0].get("version")),
                     "threads": int(loaded[0].get("num_threads") or 0),
                     "architecture": str(loaded[0].get("architecture"))})
    return {"python": platform.python_version(), "python_implementation": platform.python_implementation(),
            "platform": platform.platform(), "numpy": np.__version__, "blas": blas, "h5py": h5py.version.version,
            "hdf5": h5py.version.hdf5_version, "luigi": _distribution_version("luigi"),
            "mnist-pipeline": __version__}


_this_environment = environment  # build_report's argument of the same name hides it


def _distribution_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_report(*, run_id, dataset, hyperparameters, epochs, confusion, minibatch_losses, gradient_check=None,
                 digests=None, checkpoints=(), stages=None, mistakes=None, environment=None,
                 iterations_per_epoch=None, created_at=""):
    """The content of report.json, every figure taken from the arguments.

    epochs: rows with EPOCH_COLUMNS (and optionally validation_accuracy, validation_loss), oldest
    first, the last the final model; confusion: (classes, classes) counts, rows the true class;
    minibatch_losses (iterations,).
    checkpoints: [{"file", "iteration", "sha256"}]; each gets "epoch" = iteration / iterations per
    epoch (given, or read from the epoch rows), whatever epoch it carried.
    stages: one entry per task of the chain, in order, each
        {"task": "DownloadDataset", "state": "ran" | "cached", "seconds": float | None,
         "finished_at": ISO 8601 str | None}
    "ran": the task made its output in the command that wrote this report; "cached": its output
    was there already. seconds: how long making the output took, whenever it was made (None:
    not known); finished_at: when it was made.
    mistakes: confident_mistakes(...) of the final model on the test set.
    environment: environment() of the process that evaluated the run (default: this one's).
    ValueError for no rows, a row lacking a column, a non-square confusion matrix or a bad stage."""
    rows = [_epoch_row(k, row) for k, row in enumerate(epochs)]
    if not rows:
        raise ValueError("no epochs to report: evaluate at least one checkpoint")
    if any(row.get(key) is not None for row in rows for key in VALIDATION_COLUMNS):
        rows = [{**row, **{key: row.get(key) for key in VALIDATION_COLUMNS}} for row in rows]
    else:
        rows = [{key: value for key, value in row.items() if key not in VALIDATION_COLUMNS} for row in rows]
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {confusion.shape}")
    per_epoch = iterations_per_epoch or _per_epoch(rows)
    return {
        "run_id": run_id, "dataset": dataset, "class_names": class_names(dataset, confusion.shape[0]),
        "hyperparameters": dict(hyperparameters), "final": dict(rows[-1]), "epochs": rows,
        "minibatch_loss": [float(v) for v in np.asarray(minibatch_losses, dtype=np.float64)],
        "confusion_matrix": confusion.astype(int).tolist(), "per_class_accuracy": per_class_accuracy(confusion),
        "per_class_precision": per_class_precision(confusion),
        "gradient_check": gradient_check or {}, "digests": digests or {},
        "checkpoints": [_checkpoint(c, rows, per_epoch) for c in checkpoints],
        "stages": [_stage(k, stage) for k, stage in enumerate(stages or ())],
        "mistakes": [dict(m) for m in (mistakes or ())],
        "environment": dict(environment) if environment is not None else _this_environment(),
        "created_at": created_at, "package_version": __version__,
    }


def write_report(report_dir, report):
    """Write the report's files into report_dir; returns {name: path} of what was written."""
    report_dir = Path(report_dir)
    run_id, epochs = report["run_id"], report["epochs"]
    columns = epoch_columns(epochs)
    final = {key: report["final"][key] for key in columns if report["final"].get(key) is not None}
    contents = {
        **pages.plots(report),
        "accuracy.csv": _epochs_csv(epochs, columns),
        "report.md": _markdown(report),
        "metrics.json": _json({"final": final}),
        "params.json": _json({"run_id": run_id, **report["hyperparameters"]}),
        "dvc.yaml": dvc_yaml(columns),
        "report.json": _json(report),
        "index.html": pages.run_page(report),
    }
    for name in FILES:
        write_atomically(report_dir / name, contents[name])
    return {name: report_dir / name for name in FILES}


def epoch_columns(epochs):
    """EPOCH_COLUMNS, and the validation columns when any row has a validation figure."""
    with_validation = any(row.get(key) is not None for row in epochs for key in VALIDATION_COLUMNS)
    return EPOCH_COLUMNS + (VALIDATION_COLUMNS if with_validation else ())


def dvc_yaml(columns=EPOCH_COLUMNS):
    """dvc.yaml: metrics.json as metrics, params.json as params, and two plots of accuracy.csv
    (accuracy and loss per epoch, with the columns that exist)."""
    def plot(name, title, kind):
        wanted = [f"{part}_{kind}" for part in ("train", "validation", "test") if f"{part}_{kind}" in columns]
        return (f"  - {name}:\n      x: epoch\n      y:\n        accuracy.csv: [{', '.join(wanted)}]\n"
                f"      title: {title}\n      x_label: epoch\n      y_label: {kind}\n")

    return ("# What DVC reads: copy this file, metrics.json, params.json and accuracy.csv into a DVC repository\n"
            "# (README, 'Looking at results'); then `dvc metrics show`, `dvc plots show`, `dvc params diff`.\n"
            "metrics:\n  - metrics.json\nparams:\n  - params.json\nplots:\n"
            + plot("accuracy", "Accuracy per epoch", "accuracy")
            + plot("loss", "Loss per epoch (mean cross-entropy over the whole set)", "loss"))


def stage_seconds(report):
    """{stage: seconds} of a report.json's content, for the stages whose time is known."""
    stages = report.get("stages")
    if isinstance(stages, list):
        pairs = [(s.get("task"), s.get("seconds")) for s in stages if isinstance(s, dict)]
    else:  # reports written before stages were listed
        pairs = list((report.get("stage_seconds") or {}).items())
    return {task: seconds for task, seconds in pairs
            if isinstance(task, str) and isinstance(seconds, (int, float)) and not isinstance(seconds, bool)}


def read_report(report_dir):
    """report.json of a finished run, as written."""
    return json.loads((Path(report_dir) / "report.json").read_text())


def _json(obj):
    return json.dumps(obj, indent=2) + "\n"


def _epoch_row(index, row):
    try:
        built = {key: int(row[key]) if key == "iteration" else float(row[key]) for key in EPOCH_COLUMNS}
    except KeyError as error:
        raise ValueError(f"epoch row {index} lacks {error}; rows need {', '.join(EPOCH_COLUMNS)}") from None
    for key in VALIDATION_COLUMNS:  # present only where the run has a validation split
        if key in row:
            built[key] = None if row[key] is None else float(row[key])
    return built


def _per_epoch(rows):
    """Iterations per epoch as the epoch rows tell it (epoch = iteration / per epoch), or None."""
    for row in rows:
        if row["iteration"] > 0 and row["epoch"] > 0:
            return row["iteration"] / row["epoch"]
    return None


def _checkpoint(entry, rows, per_epoch):
    entry = dict(entry)
    iteration = int(entry["iteration"])
    same = next((row["epoch"] for row in rows if row["iteration"] == iteration), None)
    if same is not None:
        entry["epoch"] = same
    elif per_epoch:
        entry["epoch"] = iteration / per_epoch
    return {**entry, "iteration": iteration}


def _stage(index, stage):
    task, state = stage.get("task"), stage.get("state")
    seconds, finished = stage.get("seconds"), stage.get("finished_at")
    if not isinstance(task, str) or not task:
        raise ValueError(f"stage {index} has no task name: give {{'task': 'TrainNetwork', ...}}")
    if state not in ("ran", "cached"):
        raise ValueError(f"stage {task}: state {state!r} must be 'ran' or 'cached'")
    if seconds is not None and not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"stage {task}: seconds {seconds!r} must be a number >= 0 or None")
    if finished is not None and not isinstance(finished, str):
        raise ValueError(f"stage {task}: finished_at {finished!r} must be an ISO 8601 string or None")
    return {"task": task, "state": state, "seconds": None if seconds is None else float(seconds),
            "finished_at": finished}


def _epochs_csv(epochs, columns):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in epochs:
        writer.writerow({key: (f"{row[key]:.6g}" if key == "epoch" else ("" if row.get(key) is None else row[key]))
                         for key in columns})
    return out.getvalue()


def _figure(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown(report):
    final, params, names = report["final"], report["hyperparameters"], report["class_names"]
    validation = "validation_accuracy" in epoch_columns(report["epochs"])
    v_heads = " validation accuracy | validation-set loss |" if validation else ""
    precision = report.get("per_class_precision") or [None] * len(names)
    mistakes = report.get("mistakes") or []
    environment = report.get("environment") or {}
    blas = environment.get("blas") or {}
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
        "| epoch | iteration | train accuracy | test accuracy | train-set loss | test-set loss |" + v_heads,
        "| ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if validation else ""),
        *[f"| {row['epoch']:.2f} | {row['iteration']} | {row['train_accuracy']:.4f} | {row['test_accuracy']:.4f} "
          f"| {row['train_loss']:.4f} | {row['test_loss']:.4f} |"
          + (f" {_figure(row['validation_accuracy'])} | {_figure(row['validation_loss'])} |" if validation else "")
          for row in report["epochs"]], "",
        "## Precision and recall per class (final model, test set)", "",
        "Recall: the share of a class's images predicted as it (its accuracy). Precision: the share of the "
        "images predicted as a class that are of it.", "",
        "| class | precision | recall |", "| --- | ---: | ---: |",
        *[f"| {name} | {_figure(p)} | {_figure(r)} |"
          for name, p, r in zip(names, precision, report["per_class_accuracy"])], "",
        "## Confusion matrix (rows: true class, columns: predicted)", "",
        "| true \\ predicted | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names),
        *[f"| {name} | " + " | ".join(str(c) for c in counts) + " |"
          for name, counts in zip(names, report["confusion_matrix"])], "",
    ]
    if mistakes:
        lines += ["## The test images the model gets most confidently wrong", "",
                  "| test image | true class | predicted | confidence |", "| ---: | --- | --- | ---: |",
                  *[f"| {m['index']} | {_name(names, m['true'])} | {_name(names, m['predicted'])} "
                    f"| {m['confidence']:.4f} |" for m in mistakes], ""]
    if environment:
        lines += ["## Environment", "",
                  *[f"- {key}: {value}" for key, value in environment.items() if key != "blas"],
                  *([f"- BLAS: {', '.join(f'{k} {v}' for k, v in blas.items())}"] if blas else []), ""]
    return "\n".join(lines)


def _name(names, k):
    return names[k] if 0 <= k < len(names) else str(k)
