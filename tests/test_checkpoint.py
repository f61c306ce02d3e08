"""HDF5 checkpoints: exact roundtrip, atomic writes, damage detected and named."""

import json
import logging
import os

import h5py
import numpy as np
import pytest

from pipeline import checkpoint
from pipeline.errors import CheckpointError
from pipeline.network import PARAM_NAMES, TwoLayerNet


def save(path, dtype=np.float32, iteration=600, rng=None, params=None):
    rng = rng or np.random.default_rng(3)
    params = params or TwoLayerNet(784, 20, 10, rng=rng, dtype=dtype).params
    losses = np.linspace(2.3, 0.5, iteration)
    checkpoint.save_checkpoint(path, params=params, iteration=iteration, epoch=iteration / 600, losses=losses,
                               rng_state=rng.bit_generator.state, hyperparameters={"hidden_size": 20, "seed": 3},
                               dataset="synthetic", data_checksums={"a.gz": "00ff"}, run_id="h20-test",
                               inputs={"images.h5": "ab12"}, per_epoch=600)
    return params, losses, rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roundtrip_is_bit_exact_and_keeps_the_dtype(tmp_path, dtype):
    path = checkpoint.checkpoint_path(tmp_path, 600)
    assert path.name == "iter-00000600.h5"
    params, losses, _ = save(path, dtype)
    loaded = checkpoint.load_checkpoint(path)
    for key in PARAM_NAMES:
        assert loaded.params[key].dtype == dtype
        assert loaded.params[key].tobytes() == params[key].tobytes()
    assert loaded.losses.tobytes() == losses.tobytes()
    assert (loaded.iteration, loaded.epoch, loaded.run_id, loaded.dataset) == (600, 1.0, "h20-test", "synthetic")
    assert loaded.attrs["minibatch_loss"] == losses[-1] and loaded.attrs["epoch_mean_loss"] == np.mean(losses)
    assert loaded.inputs == {"images.h5": "ab12"} and loaded.hyperparameters == {"hidden_size": 20, "seed": 3}
    assert loaded.format_version == checkpoint.FORMAT_VERSION and loaded.created_at.endswith("+00:00")


def test_a_restored_generator_continues_the_same_stream(tmp_path):
    rng = np.random.default_rng(2024)
    rng.integers(0, 60000, size=777)  # advance it somewhere arbitrary
    save(tmp_path / "c.h5", rng=rng)
    expected = rng.integers(0, 60000, size=1000)
    restored = np.random.default_rng()
    restored.bit_generator.state = checkpoint.load_checkpoint(tmp_path / "c.h5").rng_state
    assert np.array_equal(restored.integers(0, 60000, size=1000), expected)


def test_the_rng_state_roundtrips_exactly_with_its_128_bit_integers(tmp_path):
    params = TwoLayerNet(784, 20, 10, rng=np.random.default_rng(0)).params
    rng = np.random.default_rng(7)
    rng.integers(0, 10, size=1)  # leaves half of a 64-bit draw buffered: has_uint32 and uinteger must survive
    state = rng.bit_generator.state
    assert state["has_uint32"] == 1
    save(tmp_path / "c.h5", rng=rng, params=params)
    loaded = checkpoint.load_checkpoint(tmp_path / "c.h5").rng_state
    assert loaded == state
    assert max(state["state"]["state"], state["state"]["inc"]) > 2 ** 64  # more than a float or int64 holds


@pytest.mark.parametrize("bit_generator", ["PCG64DXSM", "MT19937", "Philox", "SFC64"])
def test_states_holding_numpy_arrays_are_stored_and_restore_the_stream(tmp_path, bit_generator):
    rng = np.random.Generator(getattr(np.random, bit_generator)(11))
    rng.random(5)
    save(tmp_path / "c.h5", rng=rng)
    expected = rng.random(100)
    restored = np.random.Generator(getattr(np.random, bit_generator)())
    restored.bit_generator.state = checkpoint.load_checkpoint(tmp_path / "c.h5").rng_state
    assert np.array_equal(restored.random(100), expected)


def test_plain_h5py_reads_the_layout(tmp_path):
    save(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert sorted(f["params"].keys()) == sorted(PARAM_NAMES)
        assert f["params/W1"].shape == (784, 20) and f["losses"].shape == (600,)
        assert int(f.attrs["iteration"]) == 600
        assert json.loads(f.attrs["hyperparameters"])["hidden_size"] == 20
        assert json.loads(f.attrs["data_checksums"]) == {"a.gz": "00ff"}
        for name in ("rng_state", "format_version", "created_at", "package_version", "dataset", "epoch",
                     "minibatch_loss", "epoch_mean_loss", "inputs"):
            assert name in f.attrs


def test_numpy_scalars_in_hyperparameters_are_stored_as_plain_json(tmp_path):
    rng = np.random.default_rng(0)
    checkpoint.save_checkpoint(tmp_path / "c.h5", params=TwoLayerNet(784, 5, 10, rng=rng).params, iteration=0,
                               epoch=0.0, losses=[], rng_state=rng.bit_generator.state,
                               hyperparameters={"learning_rate": np.float32(0.5), "seed": np.int64(3)},
                               dataset="synthetic", data_checksums={}, run_id="r", inputs={})
    loaded = checkpoint.load_checkpoint(tmp_path / "c.h5")
    assert loaded.hyperparameters == {"learning_rate": 0.5, "seed": 3}
    assert loaded.iteration == 0 and loaded.losses.shape == (0,)
    assert "minibatch_loss" not in loaded.attrs  # no loss before the first step, rather than nan


def test_a_loss_history_of_the_wrong_length_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(CheckpointError, match="refusing to save .*c\\.h5: 599 losses for iteration 600"):
        checkpoint.save_checkpoint(tmp_path / "c.h5", params=TwoLayerNet(784, 5, 10, rng=rng).params, iteration=600,
                                   epoch=1.0, losses=np.ones(599), rng_state=rng.bit_generator.state,
                                   hyperparameters={}, dataset="synthetic", data_checksums={}, run_id="r", inputs={})
    assert list(tmp_path.iterdir()) == []


def test_nan_weights_are_refused_and_nothing_is_written(tmp_path):
    params = TwoLayerNet(784, 20, 10, rng=np.random.default_rng(0)).params
    params["b2"][3] = np.nan
    with pytest.raises(CheckpointError, match="b2 holds NaN"):
        save(tmp_path / "c.h5", params=params)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_mid_write_leaves_no_file_and_no_temporary(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(OSError, match="No space left"):
        save(tmp_path / "c.h5")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_leaves_no_file_and_no_temporary(tmp_path, monkeypatch):
    def fail(source, target):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="Input/output"):
        save(tmp_path / "c.h5")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_checkpoint_survives_a_failed_overwrite(tmp_path, monkeypatch):
    path = tmp_path / "c.h5"
    params, _, _ = save(path)
    monkeypatch.setattr(h5py.Group, "create_dataset", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save(path, iteration=1200)
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(path).iteration == 600
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:500]), "not a readable HDF5 checkpoint"),
    (lambda p: p.write_text("not hdf5 at all"), "not a readable HDF5 checkpoint"),
])
def test_damaged_files_are_named_with_the_fix(tmp_path, damage, message):
    path = tmp_path / "iter-00000600.h5"
    save(path)
    damage(path)
    with pytest.raises(CheckpointError, match=rf"iter-00000600\.h5 is {message}.*rerun the training command"):
        checkpoint.load_checkpoint(path)


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 0.75, 0.99])
def test_a_file_truncated_anywhere_is_a_checkpoint_error(tmp_path, fraction):
    path = tmp_path / "c.h5"
    save(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match=r"c\.h5 .*rerun the training command"):
        checkpoint.load_checkpoint(path)


def _replace_with_group(f, name):
    del f[name]
    f.create_group(name)


def _replace_dataset(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.__delitem__("params/W2"), r"is not a complete checkpoint \(missing params/W2\)"),
    (lambda f: f.attrs.__delitem__("format_version"), r"is not a complete checkpoint \(missing format_version\)"),
    (lambda f: _replace_with_group(f, "losses"), r"is not a complete checkpoint \(missing losses\)"),
    (lambda f: f.attrs.__setitem__("rng_state", "{not json"), r"is not a readable HDF5 checkpoint"),
    (lambda f: _replace_dataset(f, "losses", np.ones(10)), r"is inconsistent \(10 losses for iteration 600\)"),
    (lambda f: _replace_dataset(f, "params/b1", np.zeros(7)), r"is inconsistent \(shapes W1 \(784, 20\), b1 \(7,\)"),
])
def test_a_file_missing_or_mismatching_part_of_the_layout_is_named(tmp_path, damage, message):
    path = tmp_path / "c.h5"
    save(path)
    with h5py.File(path, "a") as f:
        damage(f)
    with pytest.raises(CheckpointError, match=rf"c\.h5 {message}.*rerun the training command"):
        checkpoint.load_checkpoint(path)


def test_a_missing_file_is_named():
    with pytest.raises(CheckpointError, match=r"absent\.h5: no such checkpoint"):
        checkpoint.load_checkpoint("/nonexistent/absent.h5")


def test_a_newer_format_version_says_to_upgrade(tmp_path):
    path = tmp_path / "c.h5"
    save(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = checkpoint.FORMAT_VERSION + 1
    with pytest.raises(CheckpointError, match=r"c\.h5 has format version 3, newer than .* upgrade mnist-pipeline"):
        checkpoint.load_checkpoint(path)


def test_checkpoints_are_listed_in_numeric_order_past_eight_digits(tmp_path):
    for iteration in (100_000_000, 600, 99_999_999):
        checkpoint.checkpoint_path(tmp_path, iteration).write_bytes(b"")
    (tmp_path / "iter-600.h5").write_bytes(b"")  # not our name: ignored
    (tmp_path / "model.h5").write_bytes(b"")
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "iter-00000600.h5", "iter-99999999.h5", "iter-100000000.h5"]


def _exists(path):
    return None if path.exists() else checkpoint.ABSENT


def test_a_resume_builds_on_the_unbroken_run_of_good_checkpoints_only(tmp_path, caplog):
    for iteration in (0, 600, 1200, 1800):
        save(checkpoint.checkpoint_path(tmp_path, iteration), iteration=iteration)
    (tmp_path / ".iter-00002400.h5.x.tmp").write_bytes(b"half")  # a temporary is never a checkpoint
    damaged = checkpoint.checkpoint_path(tmp_path, 1200)
    damaged.write_bytes(damaged.read_bytes()[:300])
    with caplog.at_level(logging.WARNING, logger="luigi-interface.pipeline"):
        kept = checkpoint.valid_prefix(tmp_path, [0, 600, 1200, 1800, 2400], "h20-test", {"images.h5": "ab12"},
                                       trusted=_exists)
    assert [c.iteration for c in kept] == [0, 600]  # 1800 is good, but 1200 before it is not
    assert "iter-00001200.h5" in caplog.text and "not resuming from" in caplog.text
    assert damaged.exists()  # passed over, not deleted
    assert checkpoint.valid_prefix(tmp_path, [0, 600], "another-run", {"images.h5": "ab12"}, _exists) == []
    assert checkpoint.valid_prefix(tmp_path, [0, 600], "h20-test", {"images.h5": "other data"}, _exists) == []
    assert checkpoint.valid_prefix(tmp_path / "nothing-here", [0], "h20-test", {}, _exists) == []


def test_a_checkpoint_its_record_does_not_vouch_for_ends_the_resume_there(tmp_path, caplog):
    for iteration in (0, 600, 1200):
        save(checkpoint.checkpoint_path(tmp_path, iteration), iteration=iteration)

    def trusted(path):  # as the training task's check says of a file whose bytes changed since it was saved
        return "its bytes are changed or damaged since it was saved" if path.name == "iter-00000600.h5" else None

    with caplog.at_level(logging.WARNING, logger="luigi-interface.pipeline"):
        kept = checkpoint.valid_prefix(tmp_path, [0, 600, 1200], "h20-test", {"images.h5": "ab12"}, trusted)
    assert [c.iteration for c in kept] == [0]
    assert "iter-00000600.h5 or later: its bytes are changed or damaged" in caplog.text


def test_describe_lists_datasets_and_attributes_and_rejects_non_hdf5(tmp_path):
    save(tmp_path / "c.h5")
    text = checkpoint.describe_h5(tmp_path / "c.h5")
    assert "W1  dataset (784, 20) float32" in text and "losses  dataset (600,) float64" in text
    assert "@iteration = 600" in text and "@run_id = h20-test" in text
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(CheckpointError, match=r"x\.h5 is not an HDF5 file"):
        checkpoint.describe_h5(tmp_path / "x.h5")


def test_a_file_claiming_huge_weights_is_refused_before_they_are_read(tmp_path):
    save(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r+") as f:
        del f["params/W1"]
        f["params"].create_dataset("W1", shape=(784, 10**9), dtype=np.float32, chunks=(784, 1000))  # nothing stored
    with pytest.raises(CheckpointError, match=r"holds 784,000,000,830 values, more than a checkpoint of this pipeline can"):
        checkpoint.load_checkpoint(tmp_path / "c.h5")
