"""A sweep's summary: ranked on the validation split when the runs hold one out, each run's
epoch chosen by it, and that epoch's test accuracy reported (read for reporting only)."""

import csv
import gzip
import struct

import h5py
import numpy as np
import pytest
from luigi.execution_summary import LuigiStatusCode

from pipeline import sweep, tasks
from runner import build


def report(run_id, validation, test, losses=None, size=100, seed=0, patience=0):
    """A report.json as pipeline.report writes it, one row per epoch (validation figures None: no split)."""
    params = {"dataset": "d", "hidden_size": 10, "learning_rate": 0.1, "batch_size": 50, "seed": 0,
              "iterations": 10 * (len(test) - 1), "dtype": "float32", "sampling": "shuffle"}
    if validation is not None:
        params.update(validation_size=size, split_seed=seed, **({"patience": patience} if patience else {}))
    epochs = []
    for k, t in enumerate(test):
        row = {"epoch": float(k), "iteration": 10 * k, "train_accuracy": 0.5, "test_accuracy": t,
               "train_loss": 1.0, "test_loss": 1.0}
        if validation is not None:
            row.update(validation_accuracy=validation[k], validation_loss=(losses or [1.0] * len(test))[k])
        epochs.append(row)
    return {"run_id": run_id, "dataset": "d", "hyperparameters": params, "epochs": epochs, "final": epochs[-1]}


def test_runs_are_ranked_by_best_validation_accuracy_and_report_that_epochs_test_accuracy():
    reports = [report("a", [0.1, 0.80, 0.85, 0.85, 0.84], [0.1, 0.9, 0.7, 0.99, 0.95]),
               report("b", [0.1, 0.90, 0.88], [0.1, 0.6, 0.98]),
               report("c", [0.1, 0.90, 0.70], [0.1, 0.5, 0.5], losses=[2.0, 0.3, 0.5])]
    rows = sweep.summary_rows(reports)
    # b and c tie on accuracy: the lower validation loss at that epoch ranks first
    assert [row["run_id"] for row in rows] == ["c", "b", "a"]
    a = rows[2]
    # a's best validation accuracy first reached at epoch 2: its test accuracy there, not the 0.99 of epoch 3
    assert (a["best_validation_accuracy"], a["best_epoch"], a["best_iteration"]) == (0.85, 2.0, 20)
    assert a["test_accuracy_at_best_epoch"] == 0.7 and a["final_test_accuracy"] == 0.95
    assert a["validation_size"] == 100 and a["split_seed"] == 0 and a["trained_epochs"] == 4.0


def test_the_summary_files_say_what_chose_the_runs(tmp_path):
    reports = [report("a", [0.1, 0.8], [0.1, 0.7]), report("b", [0.1, 0.9], [0.1, 0.6])]
    rows, files = sweep.write_sweep_summary(tmp_path / "with", "sweep-1", reports)
    with open(files["summary.csv"], newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(sweep.VALIDATION_COLUMNS) and [r["run_id"] for r in read] == ["b", "a"]
    assert float(read[0]["test_accuracy_at_best_epoch"]) == 0.6
    text = files["summary.md"].read_text()
    assert "ranked by their best validation accuracy on the same 100 training images" in text
    assert "test acc at that epoch (chosen on validation)" in text and "| 0.9000 | 1.00 | 0.6000 |" in text
    page = files["index.html"].read_text()
    assert "test accuracy at that epoch (chosen on validation)" in page and "chosen on the test set" not in page
    assert page.index('href="../../b/report') < page.index('href="../../a/report')

    plain = [report("a", None, [0.1, 0.7, 0.6]), report("b", None, [0.1, 0.8, 0.5])]
    rows, files = sweep.write_sweep_summary(tmp_path / "without", "sweep-2", plain)
    assert [r["run_id"] for r in rows] == ["a", "b"] and list(rows[0]) == list(sweep.COLUMNS)
    text = files["summary.md"].read_text()
    assert "chosen on the test set itself" in text and "--validation-size" in text
    assert "chosen on the test set" in files["index.html"].read_text()


@pytest.mark.parametrize("reports, message", [
    ([report("a", [0.5], [0.5]), report("b", None, [0.5])], "some runs of the sweep hold out a validation split"),
    ([report("a", [0.5], [0.5]), report("b", [0.5], [0.5], size=200)], "hold out different validation images"),
    ([report("a", [0.5], [0.5]), report("b", [0.5], [0.5], seed=1)], "hold out different validation images")])
def test_runs_that_do_not_share_one_validation_split_are_not_ranked_together(reports, message):
    with pytest.raises(ValueError, match=message):
        sweep.summary_rows(reports)


def read_idx_gz(path):
    """An IDX file, read with nothing but gzip, struct and numpy."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def independent_accuracy(h5_path, images, labels):
    """Test accuracy of the weights in an HDF5 file: plain sigmoid and softmax."""
    with h5py.File(h5_path, "r") as f:
        W1, b1, W2, b2 = (f["params"][k][()] for k in ("W1", "b1", "W2", "b2"))
    x = images.reshape(images.shape[0], -1).astype(W1.dtype) / W1.dtype.type(255)
    z1 = 1 / (1 + np.exp(-(x @ W1 + b1)))
    a2 = z1 @ W2 + b2
    y = np.exp(a2 - a2.max(axis=1, keepdims=True))
    y /= y.sum(axis=1, keepdims=True)
    return np.count_nonzero(np.argmax(y, axis=1) == labels) / labels.size


def test_a_validated_sweeps_chosen_test_accuracy_is_recomputed_from_the_checkpoint(tmp_path, synthetic_source):
    params = dict(dataset="synthetic", source_dir=str(synthetic_source), local_dirs=[], mirrors=[],
                  data_dir=str(tmp_path / "data"), artifacts_dir=str(tmp_path / "artifacts"), batch_size=50,
                  iterations=60, sampling="shuffle", validation_size=100, hidden_sizes=[8, 16],
                  learning_rates=[0.1, 0.5])
    assert build(tasks.Sweep(**params))[0] == LuigiStatusCode.SUCCESS
    summary = tasks.Sweep(**params).output().path
    with open(summary, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    ranked = [(-float(r["best_validation_accuracy"]), float(r["best_validation_loss"])) for r in rows]
    assert ranked == sorted(ranked)
    images = read_idx_gz(synthetic_source / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_gz(synthetic_source / "t10k-labels-idx1-ubyte.gz")
    for row in rows:
        run_dir = tmp_path / "artifacts" / "synthetic" / row["run_id"]
        chosen = run_dir / "checkpoints" / f"iter-{int(row['best_iteration']):08d}.h5"
        assert independent_accuracy(chosen, images, labels) == float(row["test_accuracy_at_best_epoch"])
        assert (run_dir / "best.h5").read_bytes() == chosen.read_bytes()
