"""The validation split, selection on it and early stopping: the numpy core, then the tasks on
the generated 600/200-image dataset."""

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from luigi.execution_summary import LuigiStatusCode

from fakedata import learnable
from pipeline import checkpoint, lineage, processed, runs, storage, tasks, training
from pipeline.errors import ParameterError
from pipeline.evaluation import EPOCH_COLUMNS, VALIDATION_COLUMNS, BackgroundEvaluator, evaluate
from pipeline.network import PARAM_NAMES, TwoLayerNet
from pipeline.training import (EarlyStopping, split_digest, train, training_rows, validation_split)
from runner import build


def fresh(seed=0, hidden=20):
    return TwoLayerNet(784, hidden, 10, weight_init_std=0.01, rng=np.random.default_rng(seed))


# --- the split ---

def test_the_split_gives_each_class_its_share_with_the_largest_remainders_rounded_up():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    np.random.default_rng(0).shuffle(labels)
    held = validation_split(labels, 15, seed=0)
    # shares 7.5, 4.5, 3.0: the one left over goes to the lower of the two equal remainders
    assert np.bincount(labels[held], minlength=3).tolist() == [8, 4, 3]
    held = validation_split(labels, 16, seed=0)  # shares 8.0, 4.8, 3.2
    assert np.bincount(labels[held], minlength=3).tolist() == [8, 5, 3]


@pytest.mark.parametrize("size", [1, 7, 100, 599])
def test_every_class_gets_the_floor_or_ceiling_of_its_proportional_share(size):
    _, labels = learnable(600)
    held = validation_split(labels, size, seed=3)
    assert held.dtype == np.int64 and held.size == size and np.all(np.diff(held) > 0)
    exact = size * np.bincount(labels, minlength=10) / labels.size
    counts = np.bincount(labels[held], minlength=10)
    assert np.all((counts == np.floor(exact)) | (counts == np.ceil(exact)))


def test_the_split_depends_on_labels_size_and_split_seed_only():
    _, labels = learnable(600)
    first = validation_split(labels, 100, seed=0)
    assert np.array_equal(first, validation_split(labels.copy(), 100, seed=0))
    assert not np.array_equal(first, validation_split(labels, 100, seed=1))
    assert split_digest(first) == split_digest(validation_split(labels, 100, seed=0))
    assert split_digest(first) != split_digest(validation_split(labels, 100, seed=1))


def test_the_split_digest_is_the_sha256_of_the_indices_as_little_endian_int64():
    indices = np.array([3, 9, 2 ** 40], dtype=np.int64)
    expected = hashlib.sha256(b"".join(int(i).to_bytes(8, "little") for i in indices)).hexdigest()
    assert split_digest(indices) == expected == split_digest(indices.astype(">i8"))
    assert split_digest(indices[:2]) != expected


@pytest.mark.parametrize("labels, size, message", [
    (np.zeros(10, np.int64), 10, "from 0 to 9"), (np.zeros(10, np.int64), -1, "from 0 to 9"),
    (np.zeros(10, np.int64), 2.0, "whole number"), (np.zeros(10, np.int64), True, "whole number"),
    (np.zeros(0, np.int64), 0, "from 0 to -1"), (np.zeros(10, np.float32), 2, "integers"),
    (np.zeros((5, 2), np.int64), 2, "1-d"), (np.full(10, -1), 2, "non-negative")])
def test_the_split_refuses_impossible_sizes_and_foreign_labels(labels, size, message):
    with pytest.raises(ValueError, match=message):
        validation_split(labels, size, seed=0)


def test_a_split_of_zero_images_holds_out_nothing():
    _, labels = learnable(50)
    held = validation_split(labels, 0, seed=0)
    assert held.size == 0 and held.dtype == np.int64
    assert np.array_equal(training_rows(50, held), np.arange(50))


# --- training draws from the rest only ---

@pytest.mark.parametrize("sampling", ["with-replacement", "shuffle"])
def test_no_training_batch_draws_a_held_out_image(sampling, monkeypatch):
    x, labels = learnable(530)
    held = validation_split(labels, 80, seed=0)
    rest = training_rows(530, held)
    drawn = []
    submit = training._RowGatherer.submit
    monkeypatch.setattr(training._RowGatherer, "submit",
                        lambda self, indices, here=False: drawn.append(indices.copy()) or submit(self, indices, here))
    x[held] = np.nan  # a held-out image in any batch would make its loss NaN and stop training
    seen = []
    losses = train(fresh(), x, labels, batch_size=50, learning_rate=0.3, iterations=40, sampling=sampling,
                   rng=np.random.default_rng(0), train_rows=rest, on_checkpoint=lambda i, _: seen.append(i))
    drawn = np.concatenate([d.reshape(-1) for d in drawn])
    assert drawn.size == 40 * 50 and not np.isin(drawn, held).any() and np.all(np.isfinite(losses))
    assert seen == [0, 9, 18, 27, 36, 40]  # an epoch is ceil((530 - 80) / 50) = 9 iterations
    if sampling == "shuffle":  # each epoch walks the 450 training images once
        assert np.array_equal(np.sort(drawn[:450]), rest)


def test_training_on_rows_of_a_set_gives_the_bits_of_training_on_those_rows_alone():
    x, labels = learnable(400)
    rows = training_rows(400, validation_split(labels, 70, seed=2))
    a, b, c = fresh(), fresh(), fresh()
    kwargs = dict(batch_size=40, learning_rate=0.3, iterations=30, sampling="shuffle")
    la = train(a, x, labels, rng=np.random.default_rng(5), train_rows=rows, **kwargs)
    lb = train(b, np.ascontiguousarray(x[rows]), labels[rows], rng=np.random.default_rng(5), **kwargs)
    lc = train(c, x, labels, rng=np.random.default_rng(5), train_rows=np.arange(400), **kwargs)
    ld = train(fresh(), x, labels, rng=np.random.default_rng(5), **kwargs)
    assert la.tobytes() == lb.tobytes() and lc.tobytes() == ld.tobytes()
    for key in PARAM_NAMES:
        assert a.params[key].tobytes() == b.params[key].tobytes()


# --- early stopping ---

def rows_of(accuracies):
    return [{"epoch": float(k), "iteration": 10 * k, "validation_accuracy": a} for k, a in enumerate(accuracies)]


def test_early_stopping_stops_after_patience_epochs_without_a_strictly_better_figure():
    stopper = EarlyStopping(2)
    rows = rows_of([0.1, 0.5, 0.7, 0.7, 0.6, 0.9, 0.95])
    assert not stopper.observe(rows[:4])
    assert stopper.observe(rows[:5])
    assert stopper.best["iteration"] == 20 and stopper.stopped_at["iteration"] == 40
    assert stopper.observe(rows)  # later rows change nothing
    assert stopper.best["iteration"] == 20
    assert "stopped early at epoch 4 (iteration 40)" in stopper.reason()
    assert "not improved for 2 epochs" in stopper.reason() and "epoch 2 (iteration 20)" in stopper.reason()


def test_early_stopping_reaches_the_same_decision_from_the_same_rows_however_they_arrive():
    rows = rows_of([0.2, 0.4, 0.4, 0.3, 0.5, 0.5, 0.5, 0.5])
    whole, piecewise = EarlyStopping(3), EarlyStopping(3)
    whole.observe(rows)
    for k in range(len(rows) + 1):
        piecewise.observe(rows[:k])
    assert (whole.best, whole.stopped_at) == (piecewise.best, piecewise.stopped_at) == (rows[4], rows[7])


def test_without_patience_early_stopping_only_names_the_best_epoch():
    stopper = EarlyStopping(0)
    assert not stopper.observe(rows_of([0.5, 0.4, 0.3, 0.2, 0.1, 0.6, 0.6]))
    assert stopper.best["iteration"] == 50 and "stopped" not in stopper.reason()


def test_train_ends_at_the_checkpoint_should_stop_names_and_a_resume_from_there_trains_nothing():
    x, labels = learnable(300)
    seen = []
    net = fresh()
    losses = train(net, x, labels, batch_size=50, learning_rate=0.3, iterations=60, sampling="shuffle",
                   rng=np.random.default_rng(0), on_checkpoint=lambda i, _: seen.append(i),
                   should_stop=lambda i: i >= 18)
    assert seen == [0, 6, 12, 18] and losses.shape == (18,) and np.all(np.isfinite(losses))
    stopped_at = net.params
    again = train(net, x, labels, batch_size=50, learning_rate=0.3, iterations=60, sampling="shuffle",
                  rng=np.random.default_rng(0), start_iteration=18, losses=losses, should_stop=lambda i: True)
    assert again.tobytes() == losses.tobytes()
    assert all(np.array_equal(net.params[k], stopped_at[k]) for k in PARAM_NAMES)


# --- evaluation ---

def test_the_evaluator_adds_validation_figures_and_counts_train_figures_on_the_rest_only():
    x, labels = learnable(700, seed=3)
    x_test, labels_test = learnable(150, seed=4)
    held = validation_split(labels, 120, seed=0)
    rest = training_rows(700, held)
    nets = [fresh(seed) for seed in range(3)]
    with BackgroundEvaluator(x, labels, x_test, labels_test, 10, chunk_size=64,
                             train_rows=rest, validation_rows=held) as evaluator:
        for k, net in enumerate(nets):
            evaluator.submit(k, 9 * k, net.params)
        early = evaluator.validation_rows()
        rows = evaluator.results()
    assert list(rows[0]) == list(EPOCH_COLUMNS + VALIDATION_COLUMNS)
    for row, quick, net in zip(rows, early, nets):
        assert (row["train_accuracy"], row["train_loss"]) == evaluate(net.params, x[rest], labels[rest], 64)[:2]
        assert (row["validation_accuracy"], row["validation_loss"]) == evaluate(net.params, x[held], labels[held], 64)[:2]
        assert (quick["validation_accuracy"], quick["validation_loss"]) == (
            row["validation_accuracy"], row["validation_loss"])
    with BackgroundEvaluator(x, labels, x_test, labels_test, 10) as evaluator:
        evaluator.submit(0, 0, nets[0].params)
        assert evaluator.validation_rows() == [] and list(evaluator.results()[0]) == list(EPOCH_COLUMNS)


def test_a_model_file_keeps_the_validation_columns_and_the_split_attributes(tmp_path):
    net = fresh()
    rows = [{**dict.fromkeys(EPOCH_COLUMNS, 0.5), "iteration": 0, "validation_accuracy": 0.25,
             "validation_loss": 2.0}]
    path = tmp_path / "model.h5"
    checkpoint.save_checkpoint(path, params=net.params, iteration=0, epoch=0.0, losses=[], rng_state={},
                               hyperparameters={}, dataset="d", data_checksums={}, run_id="r", inputs={},
                               evaluation=rows, attrs={"validation_split_sha256": "ab" * 32, "best_iteration": 0})
    loaded = checkpoint.load_checkpoint(path)
    assert loaded.evaluation == rows and loaded.attrs["validation_split_sha256"] == "ab" * 32
    with h5py.File(path, "r+") as f:
        f["evaluation"].attrs["columns"] = ",".join(EPOCH_COLUMNS)  # 8 figures under 6 names
    with pytest.raises(checkpoint.CheckpointError, match="expected columns"):
        checkpoint.load_checkpoint(path)


# --- the tasks ---

SMALL = dict(hidden_size=30, batch_size=50, learning_rate=0.5, iterations=240, sampling="shuffle", seed=4)


@pytest.fixture
def chain(tmp_path, synthetic_source):
    return dict(dataset="synthetic", source_dir=str(synthetic_source), local_dirs=[], mirrors=[],
                data_dir=str(tmp_path / "data"), artifacts_dir=str(tmp_path / "artifacts"), **SMALL)


def test_validation_size_zero_keeps_the_book_setup_and_todays_run_names():
    default = tasks.EvaluateNetwork(dataset="fashion-mnist")
    assert default.run_id == "h50-b100-lr0.1-s0-0c1b363d"  # the name README.md shows, from before the split
    identity = default.hyperparameters()
    assert not {"validation_size", "split_seed", "patience"} & set(identity)
    assert tasks.EvaluateNetwork(dataset="fashion-mnist", split_seed=7).run_id == default.run_id
    split = tasks.EvaluateNetwork(dataset="fashion-mnist", validation_size=5000)
    assert split.run_id != default.run_id and split.hyperparameters()["validation_size"] == 5000
    other_seed = tasks.EvaluateNetwork(dataset="fashion-mnist", validation_size=5000, split_seed=1)
    with_patience = tasks.EvaluateNetwork(dataset="fashion-mnist", validation_size=5000, patience=3)
    assert len({split.run_id, other_seed.run_id, with_patience.run_id}) == 3


@pytest.mark.parametrize("params, message", [
    (dict(patience=2), "early stopping needs a validation split; give --validation-size"),
    (dict(validation_size=59950), r"validation_size=59950: must leave a batch \(100\) of the 60000 .*at most 59900"),
    (dict(validation_size=59000, iterations=9), r"iterations=9: must be at least one epoch \(10 iterations .*1000 images")])
def test_impossible_split_settings_are_refused_before_anything_runs(params, message):
    with pytest.raises(ParameterError, match=message):
        tasks.EvaluateNetwork(dataset="fashion-mnist", **params)


def test_runs_with_other_hyperparameters_hold_out_the_same_recorded_images(chain):
    first = dict(chain, validation_size=100)
    second = dict(chain, validation_size=100, seed=9, learning_rate=0.3, hidden_size=20)
    status, _ = build(tasks.TrainNetwork(**first), tasks.TrainNetwork(**second))
    assert status == LuigiStatusCode.SUCCESS
    labels = processed.read_labels(tasks.TrainNetwork(**first).input()["labels"].path, ("train",))["train_labels"]
    expected = split_digest(validation_split(labels, 100, seed=0))
    for params in (first, second):
        task = tasks.TrainNetwork(**params)
        record = lineage.read_record(Path(task.record_location()))
        assert record["validation_split"] == {"size": 100, "split_seed": 0, "sha256": expected}
        model = checkpoint.load_checkpoint(task.run_dir / "model.h5")
        assert model.attrs["validation_split_sha256"] == expected and model.attrs["validation_size"] == 100
        # 500 training images left, batch 50: an epoch is 10 iterations
        assert [row["iteration"] for row in model.evaluation][:3] == [0, 10, 20]
        assert "best.h5" in record["outputs"]


def test_patience_stops_a_plateaued_run_and_keeps_its_best_epoch(chain, caplog):
    caplog.set_level("INFO", logger="luigi-interface")
    params = dict(chain, validation_size=100, patience=2)
    assert build(tasks.EvaluateNetwork(**params))[0] == LuigiStatusCode.SUCCESS
    task = tasks.EvaluateNetwork(**params)
    model = checkpoint.load_checkpoint(task.run_dir / "model.h5")
    accuracies = [row["validation_accuracy"] for row in model.evaluation]
    best = accuracies.index(max(accuracies))
    assert model.attrs["stopped_early"] and model.iteration < 240
    assert len(accuracies) == best + 3 and model.iteration == model.evaluation[-1]["iteration"]
    assert model.attrs["best_iteration"] == model.evaluation[best]["iteration"] == 10 * best
    assert f"stopped early at epoch {best + 2} (iteration {10 * (best + 2)}): validation accuracy has not " \
           f"improved for 2 epochs" in caplog.text
    best_file = checkpoint.load_checkpoint(task.run_dir / "best.h5")
    assert best_file.iteration == 10 * best
    assert (task.run_dir / "best.h5").read_bytes() == checkpoint.checkpoint_path(
        task.run_dir / "checkpoints", 10 * best).read_bytes()
    assert checkpoint.list_checkpoints(task.run_dir / "checkpoints")[-1].name == f"iter-{model.iteration:08d}.h5"
    report = json.loads((task.run_dir / "report" / "report.json").read_text())
    assert report["final"]["iteration"] == model.iteration and report["final"]["validation_accuracy"] == accuracies[-1]
    assert (task.run_dir / "report" / "accuracy.csv").read_text().splitlines()[0].endswith(
        "validation_accuracy,validation_loss")
    assert any(r["run_id"] == task.run_id for r in runs.read_runs(task.artifacts_dir))


@pytest.mark.parametrize("killed_after", ["an early checkpoint", "the stopping checkpoint"])
def test_a_run_resumed_after_a_kill_stops_at_the_same_epoch_with_the_same_bits(chain, tmp_path, killed_after):
    params = dict(chain, validation_size=100, patience=2)
    assert build(tasks.TrainNetwork(**params))[0] == LuigiStatusCode.SUCCESS
    task = tasks.TrainNetwork(**params)
    reference = checkpoint.load_checkpoint(task.run_dir / "model.h5")
    reference_best = (task.run_dir / "best.h5").read_bytes()
    # what a SIGKILL after checkpoint k leaves: checkpoints 0..k, no model.h5, best.h5 or record
    keep = 3 if killed_after == "an early checkpoint" else reference.iteration // 10 + 1
    for path in checkpoint.list_checkpoints(task.run_dir / "checkpoints")[keep:]:
        path.unlink()
    for path in (task.run_dir / "model.h5", task.run_dir / "best.h5", Path(task.record_location())):
        path.unlink()
    assert build(tasks.TrainNetwork(**params))[0] == LuigiStatusCode.SUCCESS
    resumed = checkpoint.load_checkpoint(task.run_dir / "model.h5")
    assert resumed.iteration == reference.iteration and resumed.evaluation == reference.evaluation
    assert resumed.losses.tobytes() == reference.losses.tobytes()
    for key in PARAM_NAMES:
        assert resumed.params[key].tobytes() == reference.params[key].tobytes()
    assert checkpoint.load_checkpoint(task.run_dir / "best.h5").params["W1"].tobytes() == \
        checkpoint.load_checkpoint(_write(tmp_path / "ref-best.h5", reference_best)).params["W1"].tobytes()


def _write(path, data):
    path.write_bytes(data)
    return path


def test_predict_on_a_run_directory_uses_the_best_validation_checkpoint(chain, synthetic_source, capsys):
    from pipeline.cli import main

    params = dict(chain, validation_size=100, patience=2)
    assert build(tasks.TrainNetwork(**params))[0] == LuigiStatusCode.SUCCESS
    run_dir = tasks.TrainNetwork(**params).run_dir
    best = checkpoint.load_checkpoint(run_dir / "best.h5")
    assert main(["predict", "--summary", str(run_dir), str(synthetic_source / "t10k-images-idx3-ubyte.gz")]) == 0
    assert f"using {run_dir / 'best.h5'}: the best validation accuracy, epoch {best.epoch:g}" in capsys.readouterr().err
    shutil.copyfile(run_dir / "model.h5", run_dir / "best.h5")  # not the file the run recorded
    assert main(["predict", "--summary", str(run_dir), str(synthetic_source / "t10k-images-idx3-ubyte.gz")]) != 0
    assert "not the run's trained model" in capsys.readouterr().err


def test_a_split_too_large_for_a_custom_dataset_is_refused_before_any_stage(chain):
    params = dict(chain, validation_size=560)  # 600 images, batch 50: at most 550 may be held out
    with pytest.raises(ParameterError, match="invalid validation_size=560: must leave a batch \\(50\\) of the 600 "
                                              "training images"):
        tasks.TrainNetwork(**params)
    assert not Path(chain["data_dir"]).exists() and not Path(chain["artifacts_dir"]).exists()


def test_checkpoints_of_another_split_are_not_resumed_from(chain, caplog):
    params = dict(chain, validation_size=100, iterations=60)
    assert build(tasks.TrainNetwork(**params))[0] == LuigiStatusCode.SUCCESS
    task = tasks.TrainNetwork(**params)
    first = checkpoint.checkpoint_path(task.run_dir / "checkpoints", 20)
    with h5py.File(first, "r+") as f:  # as if trained beside other held-out images
        inputs = json.loads(f.attrs["inputs"])
        f.attrs["inputs"] = json.dumps({**inputs, "validation_split": "0" * 64}, sort_keys=True)
    # its own record vouches for the changed file: only the split it names is wrong now
    storage.write_bytes(task.checkpoint_record(first), json.dumps(lineage.describe(first)))
    for path in (task.run_dir / "model.h5", Path(task.record_location())):
        path.unlink()
    caplog.set_level("WARNING", logger="luigi-interface")
    assert build(tasks.TrainNetwork(**params))[0] == LuigiStatusCode.SUCCESS
    assert f"not resuming from {first} or later: it was trained from other data" in caplog.text
    assert checkpoint.load_checkpoint(first).inputs["validation_split"] == \
        checkpoint.load_checkpoint(task.run_dir / "model.h5").attrs["validation_split_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("killed_after_save", ["early", "stop", "model"])
def test_patience_decides_the_same_after_a_real_sigkill(tmp_path, synthetic_source, killed_after_save):
    """SIGKILL (tests/killer.py) right after the 3rd checkpoint, after the stopping checkpoint, or
    after model.h5 but before its record; the rerun ends bit-identical to an undisturbed run."""
    from runner import run as run_tool

    def command(workdir):
        return ["--module", "pipeline.tasks", "TrainNetwork", "--local-scheduler", "--dataset", "synthetic",
                "--source-dir", str(synthetic_source), "--local-dirs", "[]", "--mirrors", "[]",
                "--data-dir", str(workdir / "data"), "--artifacts-dir", str(workdir / "artifacts"),
                "--hidden-size", "30", "--batch-size", "50", "--learning-rate", "0.5", "--iterations", "240",
                "--sampling", "shuffle", "--seed", "4", "--validation-size", "100", "--patience", "2"]

    reference_dir = tmp_path / "reference"
    assert run_tool(command(reference_dir), tmp_path).returncode == 0
    (reference_run,) = (reference_dir / "artifacts" / "synthetic").glob("h30-*")
    reference = checkpoint.load_checkpoint(reference_run / "model.h5")
    stop_saves = reference.iteration // 10 + 1  # checkpoints 0, 10, ..., the stopping one
    count = {"early": 3, "stop": stop_saves, "model": stop_saves + 1}[killed_after_save]
    workdir = tmp_path / "killed"
    killed = run_tool(["pipeline.checkpoint:save_checkpoint", str(count), "after", "--", *command(workdir)],
                      tmp_path, tool="killer")
    assert killed.returncode == -9
    (run_dir,) = (workdir / "artifacts" / "synthetic").glob("h30-*")
    assert not (run_dir / "lineage" / "TrainNetwork.json").exists()
    done = run_tool(command(workdir), tmp_path)
    assert done.returncode == 0 and "resuming training" in done.stderr
    assert f"stopped early at epoch {reference.iteration // 10}" in done.stderr
    resumed = checkpoint.load_checkpoint(run_dir / "model.h5")
    assert resumed.evaluation == reference.evaluation and resumed.losses.tobytes() == reference.losses.tobytes()
    for key in PARAM_NAMES:
        assert resumed.params[key].tobytes() == reference.params[key].tobytes()
    assert checkpoint.load_checkpoint(run_dir / "best.h5").params["W1"].tobytes() == \
        checkpoint.load_checkpoint(reference_run / "best.h5").params["W1"].tobytes()
