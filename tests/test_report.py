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
    assert "| 8 | 0.5000 | 0.5000 |" in text  # precision 10 / (10 + 10), recall 10 / (10 + 10)
    assert "| 9 | 0.0000 | n/a |" in text  # predicted 10 times, never right; no sample of class 9
    assert "| 0 | 90 | 10 | 0 |" in text  # first row of the confusion matrix


def test_plots_are_stand_alone_svg_files_with_their_lines(written):
    namespace = {"svg": "http://www.w3.org/2000/svg"}
    for name, lines in (("accuracy.svg", 2), ("loss.svg", 2), ("minibatch_loss.svg", 1)):
        root = ElementTree.parse(written[0] / name).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and int(root.get("width")) >= 500
        drawn = root.findall(".//svg:path[@class='line']", namespace)
        assert len(drawn) == lines and all(line.get("d").count("L") >= 2 for line in drawn)
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
    assert "| Trouser | 0.8889 | 0.8889 |" in (tmp_path / "report.md").read_text()


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


# --- what the report adds up -------------------------------------------------------------------

HAND = np.array([[5, 1, 0],   # class 0: 6 images, 5 right; predicted 7 times, 5 right
                 [2, 3, 1],   # class 1: 6 images, 3 right; predicted 4 times, 3 right
                 [0, 0, 4]])  # class 2: 4 images, 4 right; predicted 5 times, 4 right


def test_precision_and_recall_agree_with_a_hand_computed_confusion_matrix(tmp_path):
    built = write(tmp_path, confusion=HAND)
    assert built["per_class_accuracy"] == [5 / 6, 3 / 6, 4 / 4]
    assert built["per_class_precision"] == [5 / 7, 3 / 4, 4 / 5]
    assert report.per_class_precision(np.array([[0, 2], [0, 1]])) == [None, 1 / 3]  # class 0 never predicted
    text = (tmp_path / "report.md").read_text()
    assert "| 0 | 0.7143 | 0.8333 |" in text and "| 2 | 0.8000 | 1.0000 |" in text


def test_checkpoint_epochs_are_computed_from_their_iterations(tmp_path):
    checkpoints = [{"file": f"iter-{i:08d}.h5", "iteration": i, "sha256": "0" * 64} for i in (0, 600, 900)]
    checkpoints[1]["epoch"] = 7.0  # a wrong epoch carried in is replaced
    built = write(tmp_path, checkpoints=checkpoints)
    assert [c["epoch"] for c in built["checkpoints"]] == [0.0, 1.0, 1.5]
    between = write(tmp_path, checkpoints=[{"file": "iter-00000300.h5", "iteration": 300, "sha256": "0" * 64}])
    assert between["checkpoints"][0]["epoch"] == 0.5  # no epoch row at 300: 300 / 600 iterations per epoch
    given = write(tmp_path, checkpoints=[{"file": "x.h5", "iteration": 450, "sha256": "0"}], iterations_per_epoch=900)
    assert given["checkpoints"][0]["epoch"] == 0.5
    page = (tmp_path / "index.html").read_text()
    assert 'data-key="epoch" data-value="0.5">0.50</td>' in page


STAGES = [{"task": "DownloadDataset", "state": "ran", "seconds": 1.25, "finished_at": "2026-12-02T10:00:01+00:00"},
          {"task": "NormalizeImages", "state": "cached", "seconds": 2.5, "finished_at": "2026-12-01T09:00:00+00:00"},
          {"task": "EvaluateNetwork", "state": "ran", "seconds": 0.5, "finished_at": None}]


def test_stages_are_kept_as_given_and_shown_ran_or_cached(tmp_path):
    built = write(tmp_path, stages=STAGES)
    assert built["stages"] == STAGES
    assert json.loads((tmp_path / "report.json").read_text())["stages"] == STAGES
    page = (tmp_path / "index.html").read_text()
    assert page.count('data-state="ran"') == 2 and page.count('data-state="cached"') == 1
    assert 'data-key="total" data-value="1.75"' in page  # the stages that ran in this command


@pytest.mark.parametrize("stage, message", [
    ({"task": "TrainNetwork", "state": "done"}, "state 'done' must be 'ran' or 'cached'"),
    ({"task": "TrainNetwork", "state": "ran", "seconds": -1.0}, "seconds -1.0 must be a number >= 0"),
    ({"task": "TrainNetwork", "state": "ran", "seconds": float("nan")}, "must be a number >= 0"),
    ({"state": "ran"}, "stage 0 has no task name"),
])
def test_a_bad_stage_is_refused(tmp_path, stage, message):
    with pytest.raises(ValueError, match=message):
        write(tmp_path / "report", stages=[stage])
    assert not (tmp_path / "report").exists()


def test_confident_mistakes_are_the_most_confident_wrong_answers_first():
    probabilities = np.array([[0.9, 0.1, 0.0],    # 0: right
                              [0.2, 0.7, 0.1],    # 1: wrong (true 0), 0.7
                              [0.1, 0.1, 0.8],    # 2: wrong (true 1), 0.8
                              [0.6, 0.3, 0.1],    # 3: wrong (true 2), 0.6
                              [0.2, 0.7, 0.1],    # 4: wrong (true 2), 0.7: a tie with 1, later index
                              [0.0, 0.0, 1.0]])   # 5: right
    labels = np.array([0, 0, 1, 2, 2, 2])
    images = np.linspace(0, 1, 6 * 784).reshape(6, 784)
    found = report.confident_mistakes(probabilities, labels, images, k=3)
    assert [(m["index"], m["true"], m["predicted"]) for m in found] == [(2, 1, 2), (1, 0, 1), (4, 2, 1)]
    assert [m["confidence"] for m in found] == [0.8, 0.7, 0.7]
    assert found[0]["pixels"] == [int(round(v * 255)) for v in images[2]] and len(found[0]["pixels"]) == 784
    assert all(0 <= p <= 255 and isinstance(p, int) for m in found for p in m["pixels"])
    assert len(report.confident_mistakes(probabilities, labels, images)) == 4  # k=16, only 4 wrong
    assert report.confident_mistakes(probabilities[[0, 5]], labels[[0, 5]], images[[0, 5]]) == []
    assert report.confident_mistakes(np.empty((0, 3)), np.empty(0, int), np.empty((0, 784))) == []


@pytest.mark.parametrize("shapes, message", [
    (((4, 3), (5,), (4, 784)), "4 probabilities, 5 labels and 4 images"),
    (((4,), (4,), (4, 784)), "needs probabilities"),
])
def test_confident_mistakes_refuses_arrays_that_do_not_line_up(shapes, message):
    (p, l, i) = shapes
    with pytest.raises(ValueError, match=message):
        report.confident_mistakes(np.zeros(p), np.zeros(l, int), np.zeros(i))


def test_mistakes_are_stored_and_drawn_as_pictures(tmp_path):
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(10), size=50)
    labels = rng.integers(0, 10, 50)
    mistakes = report.confident_mistakes(probabilities, labels, rng.random((50, 784)), k=5)
    built = write(tmp_path, mistakes=mistakes, dataset="fashion-mnist")
    assert json.loads((tmp_path / "report.json").read_text())["mistakes"] == built["mistakes"] == mistakes
    page = (tmp_path / "index.html").read_text()
    assert page.count('<figure class="mistake"') == 5 and page.count('src="data:image/png;base64,') == 5
    first = mistakes[0]
    assert (f'data-index="{first["index"]}" data-true="{first["true"]}" data-predicted="{first["predicted"]}" '
            f'data-confidence="{first["confidence"]!r}"') in page
    assert f'<span class="true">{report.CLASS_NAMES["fashion-mnist"][first["true"]]}</span>'.replace("/", "/") in page


def test_environment_names_the_versions_that_ran(tmp_path):
    import h5py

    environment = report.environment()
    assert environment["numpy"] == np.__version__ and environment["h5py"] == h5py.version.version
    assert environment["python"].count(".") == 2 and environment["luigi"][0].isdigit()
    assert set(environment["blas"]) >= {"name", "version"}
    built = write(tmp_path)
    assert built["environment"]["numpy"] == np.__version__
    page = (tmp_path / "index.html").read_text()
    assert f'data-key="numpy" data-value="{np.__version__}"' in page and 'data-key="blas"' in page


VALIDATED = [{**row, "validation_accuracy": row["test_accuracy"] + 0.01, "validation_loss": row["test_loss"] - 0.01}
             for row in EPOCHS]


def test_validation_figures_show_wherever_train_and_test_do(tmp_path):
    built = write(tmp_path, epochs=VALIDATED)
    assert built["final"]["validation_accuracy"] == pytest.approx(0.8612)
    with open(tmp_path / "accuracy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*report.EPOCH_COLUMNS, "validation_accuracy", "validation_loss"]
    assert float(rows[1]["validation_loss"]) == pytest.approx(0.65)
    assert json.loads((tmp_path / "metrics.json").read_text())["final"]["validation_accuracy"] == pytest.approx(0.8612)
    assert "validation accuracy | validation-set loss |" in (tmp_path / "report.md").read_text()
    assert "[train_accuracy, validation_accuracy, test_accuracy]" in (tmp_path / "dvc.yaml").read_text()
    page = (tmp_path / "index.html").read_text()
    assert 'id="final-validation_accuracy"' in page and page.count('data-key="validation_loss"') == 3
    assert page.count('data-label="validation"') == 2  # on the accuracy and the loss plot
    accuracy_svg = (tmp_path / "accuracy.svg").read_text()
    assert accuracy_svg.count('class="line"') == 3


def test_no_validation_split_leaves_no_trace(tmp_path):
    rows = [{**row, "validation_accuracy": None, "validation_loss": None} for row in EPOCHS]
    built = write(tmp_path, epochs=rows)
    assert "validation_accuracy" not in built["final"] and all("validation_loss" not in r for r in built["epochs"])
    assert "validation" not in (tmp_path / "accuracy.csv").read_text()
    assert "validation" not in (tmp_path / "metrics.json").read_text() + (tmp_path / "dvc.yaml").read_text()
    assert "validation" not in (tmp_path / "index.html").read_text()


def test_dvc_yaml_plots_accuracy_and_loss_from_accuracy_csv(written):
    text = (written[0] / "dvc.yaml").read_text()
    assert "metrics:\n  - metrics.json\nparams:\n  - params.json\n" in text
    assert "accuracy.csv: [train_accuracy, test_accuracy]" in text and "accuracy.csv: [train_loss, test_loss]" in text
    assert text.count("x: epoch") == 2


def test_the_index_lists_each_sweep_with_a_summary_and_skips_damaged_ones(tmp_path):
    runs.add_run(str(tmp_path), {"run_id": "a", "dataset": "synthetic", "test_accuracy": 0.5,
                                 "finished_at": "2026-12-01T10:00:00+00:00"})
    runs.add_run(str(tmp_path), {"run_id": "b", "dataset": "synthetic", "test_accuracy": 0.7,
                                 "finished_at": "2026-12-01T11:00:00+00:00"})
    sweeps = tmp_path / "synthetic" / "sweeps"
    for name, text in (("sweep-good", "run_id,final_test_accuracy\nb,0.7\na,0.5\n"), ("sweep-empty", ""),
                       ("sweep-foreign", "name,value\nx,1\n"), ("sweep-binary", None)):
        (sweeps / name).mkdir(parents=True)
        path = sweeps / name / "summary.csv"
        path.write_bytes(b"\xff\xfe\x00garbage" if text is None else text.encode())
    (sweeps / "sweep-nosummary").mkdir()
    listed = runs.sweep_rows(str(tmp_path), runs.read_runs(str(tmp_path)))
    assert listed == [{"sweep_id": "sweep-good", "dataset": "synthetic", "run_count": 2, "best_run_id": "b",
                       "chosen_on": "test", "best_test_accuracy": 0.7, "finished_at": "2026-12-01T11:00:00+00:00",
                       "href": "synthetic/sweeps/sweep-good/index.html"}]
    runs.write_index(str(tmp_path))
    page = (tmp_path / "index.html").read_text()
    assert '<a href="synthetic/sweeps/sweep-good/index.html">sweep-good</a>' in page and "sweep-empty" not in page
