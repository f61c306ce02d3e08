"""CheckGradient, TrainNetwork and EvaluateNetwork through Luigi, on small generated datasets."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from luigi.execution_summary import LuigiStatusCode

from fakedata import make_idx_dataset
from pipeline import checkpoint, processed, runs, storage, tasks
from pipeline.errors import ParameterError
from pipeline.network import PARAM_NAMES, TwoLayerNet
from runner import build

# A generated dataset under a custom name: DownloadDataset takes it from source_dir only.
SMALL = dict(hidden_size=30, batch_size=50, learning_rate=0.5, iterations=120, sampling="shuffle", seed=3)


def run(task_class, **params):
    return build(task_class(**params))[0]


@pytest.fixture
def chain(tmp_path, synthetic_source):
    """Explicit parameters for a run on the generated dataset, all paths under tmp_path."""
    return dict(dataset="synthetic", source_dir=str(synthetic_source), local_dirs=[], mirrors=[],
                data_dir=str(tmp_path / "data"), artifacts_dir=str(tmp_path / "artifacts"), **SMALL)


def test_end_to_end_run_learns_the_synthetic_dataset(chain):
    assert run(tasks.EvaluateNetwork, **chain) == LuigiStatusCode.SUCCESS
    task = tasks.EvaluateNetwork(**chain)
    metrics = json.loads((task.run_dir / "report" / "metrics.json").read_text())
    assert metrics["final"]["test_accuracy"] >= 0.9
    assert metrics["final"]["iteration"] == SMALL["iterations"]

    params = json.loads((task.run_dir / "report" / "params.json").read_text())
    assert params["run_id"] == task.run_dir.name and params["hidden_size"] == 30

    check = json.loads((task.run_dir / "gradient_check.json").read_text())
    assert check["passed"] and check["worst_relative_error"] < 1e-7
    assert check["parameters"]["W1"]["entries_checked"] == 100

    # 600 training images, batch 50: an epoch is 12 iterations; checkpoints at 0, 12, ..., 120
    paths = checkpoint.list_checkpoints(task.run_dir / "checkpoints")
    assert [checkpoint.load_checkpoint(p).iteration for p in paths] == list(range(0, 121, 12))
    final = checkpoint.load_checkpoint(paths[-1])
    model = checkpoint.load_checkpoint(task.run_dir / "model.h5")
    for key in PARAM_NAMES:
        assert np.array_equal(model.params[key], final.params[key])
        assert model.params[key].dtype == np.float32
    assert len(model.losses) == 120 and np.all(np.isfinite(model.losses))
    assert [row["iteration"] for row in model.evaluation] == list(range(0, 121, 12))


def test_a_rerun_with_equal_parameters_does_nothing(chain):
    assert run(tasks.EvaluateNetwork, **chain) == LuigiStatusCode.SUCCESS
    run_dir = tasks.EvaluateNetwork(**chain).run_dir
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert run(tasks.EvaluateNetwork, **chain) == LuigiStatusCode.SUCCESS
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert before == after


def test_a_changed_parameter_trains_into_a_new_run_directory(chain):
    first = tasks.TrainNetwork(**chain)
    second = tasks.TrainNetwork(**{**chain, "learning_rate": 0.25})
    third = tasks.TrainNetwork(**{**chain, "dtype": "float64"})
    assert len({first.run_dir, second.run_dir, third.run_dir}) == 3
    assert tasks.TrainNetwork(**chain).run_dir == first.run_dir
    assert first.run_dir.name.startswith("h30-b50-lr0.5-s3-")
    # a path is not part of a run's identity
    assert tasks.TrainNetwork(**{**chain, "data_dir": "elsewhere"}).run_id == first.run_id


def test_float64_training_writes_float64_checkpoints(chain):
    params = {**chain, "dtype": "float64", "iterations": 24}
    assert run(tasks.TrainNetwork, **params) == LuigiStatusCode.SUCCESS
    with h5py.File(tasks.TrainNetwork(**params).output().path, "r") as f:
        assert f["params/W1"].dtype == np.float64


def test_a_broken_backprop_fails_the_gradient_check_and_nothing_trains(chain, monkeypatch):
    original = TwoLayerNet.gradient

    def off_by_two_percent(self, x, t):
        grads = original(self, x, t)
        grads["W2"] = grads["W2"] * 1.02
        return grads

    monkeypatch.setattr(TwoLayerNet, "gradient", off_by_two_percent)
    assert run(tasks.TrainNetwork, **chain) == LuigiStatusCode.FAILED
    task = tasks.CheckGradient(**chain)
    assert not task.complete()
    failed = json.loads((task.run_dir / "gradient_check.failed.json").read_text())
    assert not failed["passed"] and failed["parameters"]["W2"]["relative_error"] > 1e-3
    assert not (task.run_dir / "checkpoints").exists()


@pytest.mark.parametrize("change", [
    dict(hidden_size=0), dict(batch_size=-1), dict(learning_rate=0.0), dict(iterations=0),
    dict(dtype="float16"), dict(sampling="sometimes"), dict(dataset="../escape"),
])
def test_invalid_parameters_are_rejected_before_any_file_is_written(chain, tmp_path, change):
    with pytest.raises(ParameterError):
        tasks.EvaluateNetwork(**{**chain, **change})
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "data").exists()


def test_a_batch_larger_than_the_training_set_is_rejected_before_any_stage(chain, tmp_path):
    with pytest.raises(ParameterError, match="invalid batch_size=5000: must be at most the 600 training images"):
        tasks.TrainNetwork(**{**chain, "batch_size": 5000})  # source_dir's labels header gives the size
    assert not (tmp_path / "data").exists() and not (tmp_path / "artifacts").exists()


def test_a_diverging_run_fails_the_task_and_leaves_no_model(chain, caplog):
    params = {**chain, "learning_rate": 1e300}  # the first update sends the weights to infinity
    assert run(tasks.TrainNetwork, **params) == LuigiStatusCode.FAILED
    task = tasks.TrainNetwork(**params)
    assert not task.complete()
    assert [checkpoint.load_checkpoint(p).iteration for p in checkpoint.list_checkpoints(task.run_dir / "checkpoints")] == [0]
    assert "training diverged; try a smaller learning_rate than 1e+300" in caplog.text


def test_report_figures_agree_with_the_checkpoints_they_came_from(chain, monkeypatch):
    read_parts = []
    read_images = processed.read_images
    monkeypatch.setattr(processed, "read_images", lambda path, parts: read_parts.append(parts) or read_images(path, parts))
    assert run(tasks.EvaluateNetwork, **chain) == LuigiStatusCode.SUCCESS
    assert read_parts[-1] == ("test",)  # EvaluateNetwork reads the test split alone: the rest came with model.h5
    monkeypatch.undo()
    task = tasks.EvaluateNetwork(**chain)
    full = json.loads((task.run_dir / "report" / "report.json").read_text())
    images_path = Path(chain["data_dir"]) / "processed" / "synthetic" / "images.h5"
    data = processed.read_images(images_path)
    labels = processed.read_labels(Path(chain["data_dir"]) / "processed" / "synthetic" / "labels.h5")
    paths = checkpoint.list_checkpoints(task.run_dir / "checkpoints")
    assert [row["iteration"] for row in full["epochs"]] == [checkpoint.load_checkpoint(p).iteration for p in paths]
    assert [c["file"] for c in full["checkpoints"]] == [p.name for p in paths]
    for row, path in zip(full["epochs"], paths):
        net = TwoLayerNet.from_params(checkpoint.load_checkpoint(path).params)
        assert row["test_accuracy"] == net.accuracy(data["test"], labels["test_labels"])
        assert row["train_accuracy"] == net.accuracy(data["train"], labels["train_labels"])
        assert row["test_loss"] == pytest.approx(float(net.loss(data["test"], labels["test_labels"])), rel=1e-5)
        assert row["train_loss"] == pytest.approx(float(net.loss(data["train"], labels["train_labels"])), rel=1e-5)
    final = TwoLayerNet.from_params(checkpoint.load_checkpoint(task.run_dir / "model.h5").params)
    predicted = final.predict(data["test"]).argmax(axis=1)
    expected = np.zeros((10, 10), dtype=int)
    np.add.at(expected, (labels["test_labels"], predicted), 1)
    assert full["confusion_matrix"] == expected.tolist()
    assert full["digests"]["data"]["images.h5"] == storage.file_sha256(images_path)
    assert full["gradient_check"]["passed"] and [s["task"] for s in full["stages"]] == [
        "DownloadDataset", "NormalizeImages", "EncodeLabels", "CheckGradient", "TrainNetwork", "EvaluateNetwork"]
    assert all(s["seconds"] is not None and s["finished_at"] for s in full["stages"])
    rows = runs.read_runs(chain["artifacts_dir"])
    assert [r["run_id"] for r in rows] == [task.run_id]
    assert float(rows[0]["test_accuracy"]) == full["final"]["test_accuracy"]


def test_a_custom_dataset_from_another_source_dir_is_fetched_again_and_retrained(chain, tmp_path):
    assert run(tasks.EvaluateNetwork, **chain) == LuigiStatusCode.SUCCESS
    other = tmp_path / "other-source"
    make_idx_dataset(other, n_train=600, n_test=200, seed=77)
    moved = {**chain, "source_dir": str(other)}
    reason = tasks.EvaluateNetwork(**moved).stale_reason()
    assert f"another source than --source-dir {other}" in reason
    assert run(tasks.EvaluateNetwork, **moved) == LuigiStatusCode.SUCCESS
    manifest = json.loads((Path(chain["data_dir"]) / "raw" / "synthetic" / "MANIFEST.json").read_text())
    assert all(entry["source"].startswith(str(other)) for entry in manifest["files"].values())
    assert tasks.EvaluateNetwork(**moved).complete() and not tasks.EvaluateNetwork(**chain).complete()


def test_checkpoint_retention_keeps_the_last_and_every_kth_and_the_run_stays_complete(chain):
    params = {**chain, "keep_last": 2, "keep_every": 4}  # 11 checkpoints, 12 iterations an epoch
    assert run(tasks.EvaluateNetwork, **params) == LuigiStatusCode.SUCCESS
    task = tasks.EvaluateNetwork(**params)
    kept = [checkpoint.load_checkpoint(p).iteration for p in checkpoint.list_checkpoints(task.run_dir / "checkpoints")]
    assert kept == [0, 48, 96, 108, 120]
    full = json.loads((task.run_dir / "report" / "report.json").read_text())
    assert len(full["epochs"]) == 11 and [c["iteration"] for c in full["checkpoints"]] == kept
    assert task.complete() and tasks.EvaluateNetwork(**chain).complete()  # retention is no part of a run's identity
