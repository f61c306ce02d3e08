"""Reports: every figure in every file agrees with the inputs; runs.csv under concurrent writers."""

import csv
import json
import multiprocessing

import xml.etree.ElementTree as ElementTree
import numpy as np
import pytest

from pipeline import report, runs
from pipeline.evaluation import EPOCH_COLUMNS

EPOCHS = [
    {"epoch": 0.0, "iteration": 0, "train_accuracy": 0.1, "train_loss": 2.30, "test_accuracy": 0.098, "test_loss": 2.31},
    {"epoch": 1.0, "iteration": 600, "train_accuracy": 0.81, "train_loss": 0.61, "test_accuracy": 0.79, "test_loss": 0.66},
    {"epoch": 1.5, "iteration": 900, "train_accuracy": 0.86, "train_loss": 0.41, "test_accuracy": 0.8512,
     "test_loss": 0.45},
]
CONFUSION = np.diag([90, 80, 70, 60, 50, 40, 30, 20, 10, 0]) + np.eye(10, k=1, dtype=int) * 10


LOSSES = 2.3 * np.exp(-np.arange(900) / 300) + 0.1


def write(directory, **changes):
    arguments = dict(run_id="h50-test", dataset="synthetic", hyperparameters={"hidden_size": 50, "learning_rate": 0.1},
                     digests={"model": "abc"}, epochs=EPOCHS, minibatch_losses=LOSSES, confusion=CONFUSION)
    built = report.build_report(**{**arguments, **changes})
    report.write_report(directory, built)
    return built


@pytest.fixture
def written(tmp_path):
    return tmp_path / "report", write(tmp_path / "report")


def test_report_json_holds_the_given_figures_and_metrics_json_numbers_only(written):
    directory, returned = written
    full = json.loads((directory / "report.json").read_text())
    assert full == returned
    assert full["final"] == EPOCHS[-1] and full["epochs"] == EPOCHS
    assert full["confusion_matrix"] == CONFUSION.tolist() and full["minibatch_loss"] == LOSSES.tolist()
    assert full["hyperparameters"] == {"hidden_size": 50, "learning_rate": 0.1} and full["digests"] == {"model": "abc"}
    assert json.loads((directory / "metrics.json").read_text()) == {"final": EPOCHS[-1]}
    assert json.loads((directory / "params.json").read_text()) == {"run_id": "h50-test", "hidden_size": 50,
                                                                   "learning_rate": 0.1}


def test_per_class_accuracy_is_the_diagonal_over_row_sums(written):
    per_class = dict(zip(written[1]["class_names"], written[1]["per_class_accuracy"]))
    assert per_class["0"] == pytest.approx(90 / 100) and per_class["8"] == pytest.approx(10 / 20)
    assert per_class["9"] is None  # no sample of class 9: no accuracy, not 0 and not a division error
    assert report.per_class_accuracy(np.array([[3, 1], [0, 4]])) == [0.75, 1.0]


def test_accuracy_csv_reads_back_to_the_same_numbers(written):
    with open(written[0] / "accuracy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(EPOCH_COLUMNS)
    assert len(rows) == 3
    for row, expected in zip(rows, EPOCHS):
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value)


def test_report_md_summarises_the_run(written):
    text = (written[0] / "report.md").read_text()
    assert "test accuracy **0.8512**" in text
    assert "| 1.00 | 600 | 0.8100 | 0.7900 | 0.6100 | 0.6600 |" in text
    assert "| 8 | 0.5000 |" in text and "| 9 | n/a |" in text
    assert "| 0 | 90 | 10 | 0 |" in text  # first row of the confusion matrix


def test_plots_are_stand_alone_svg_files_with_their_lines(written):
    namespace = {"svg": "http://www.w3.org/2000/svg"}
    for name, lines in (("accuracy.svg", 2), ("loss.svg", 2), ("minibatch_loss.svg", 1)):
        root = ElementTree.parse(written[0] / name).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and int(root.get("width")) >= 500
        drawn = root.findall(".//svg:polyline[@class='line']", namespace)
        assert len(drawn) == lines and all(len(line.get("points").split()) >= 3 for line in drawn)
    assert "![accuracy per epoch](accuracy.svg)" in (written[0] / "report.md").read_text()


def test_no_temporary_files_are_left(written):
    assert sorted(p.name for p in written[0].iterdir()) == sorted(report.FILES)


def test_numpy_scalars_in_the_rows_are_written_as_plain_numbers(tmp_path):
    rows = [{key: (np.int64(value) if key == "iteration" else np.float32(value)) for key, value in row.items()}
            for row in EPOCHS]
    write(tmp_path, epochs=rows)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"]["iteration"] == 900 and isinstance(metrics["final"]["iteration"], int)
    assert metrics["final"]["test_accuracy"] == pytest.approx(0.8512)


@pytest.mark.parametrize("changes, message", [
    ({"epochs": []}, "no epochs to report"),
    ({"epochs": [{"epoch": 1.0, "iteration": 600}]}, "epoch row 0 lacks 'train_accuracy'"),
    ({"confusion": np.ones((10, 9), dtype=int)}, r"must be square, got shape \(10, 9\)"),
])
def test_bad_inputs_are_refused_before_any_file_is_written(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        write(tmp_path / "report", **changes)
    assert not (tmp_path / "report").exists()


def test_fashion_mnist_classes_are_named(tmp_path):
    built = write(tmp_path, dataset="fashion-mnist")
    assert built["class_names"][1] == "Trouser" and built["per_class_accuracy"][1] == pytest.approx(80 / 90)
    assert "| Trouser | 0.8889 |" in (tmp_path / "report.md").read_text()


def _append_many(path, prefix, count):
    for k in range(count):
        runs.add_run(path, {"run_id": f"{prefix}-{k}", "dataset": "synthetic", "test_accuracy": k / 100})


def test_runs_csv_keeps_every_row_under_two_concurrent_writer_processes(tmp_path):
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_many, args=(str(tmp_path), prefix, 50)) for prefix in ("a", "b")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    with open(tmp_path / "runs.csv", newline="") as f:
        records = list(csv.reader(f))
    assert records[0] == list(runs.RUN_COLUMNS)  # one header, then only data rows of full width
    assert len(records) == 101 and all(len(r) == len(runs.RUN_COLUMNS) for r in records)
    rows = runs.read_runs(str(tmp_path))
    assert sorted(r["run_id"] for r in rows) == sorted(f"{p}-{k}" for p in "ab" for k in range(50))
    assert all(r["dataset"] == "synthetic" and r["finished_at"] for r in rows)
    # each writer's rows keep its own order: every append saw the rows written before it
    for prefix in "ab":
        assert [r["run_id"] for r in rows if r["run_id"].startswith(prefix)] == [f"{prefix}-{k}" for k in range(50)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "index.html", "runs.csv"]


def test_a_rerun_replaces_its_row(tmp_path):
    path = str(tmp_path)
    runs.add_run(path, {"run_id": "x", "dataset": "d", "test_accuracy": 0.5})
    runs.add_run(path, {"run_id": "y", "dataset": "d", "test_accuracy": 0.6})
    runs.add_run(path, {"run_id": "x", "dataset": "d", "test_accuracy": 0.7, "not_a_column": 1})
    rows = runs.read_runs(path)
    assert [(r["run_id"], r["test_accuracy"]) for r in rows] == [("y", "0.6"), ("x", "0.7")]
