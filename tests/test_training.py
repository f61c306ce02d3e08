"""Mini-batch SGD core: checkpoint schedule, reproducibility, resume, divergence, validation."""

import threading
import time

import numpy as np
import pytest

from pipeline import evaluation, training
from pipeline.errors import ParameterError, TrainingError
from pipeline.evaluation import (BackgroundEvaluator, confusion_matrix, evaluate, evaluate_epochs, evaluate_snapshot,
                                 params_digest)
from pipeline.network import PARAM_NAMES, TwoLayerNet
from pipeline.training import (_draw_batches, checkpoint_iterations, iterations_per_epoch, train,
                               validate_hyperparameters)


def blobs(n, seed, dtype=np.float32):
    """A learnable 10-class problem: noisy copies of ten fixed random 784-pixel prototypes."""
    prototypes = np.random.default_rng(1234).random((10, 784))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    x = np.clip(prototypes[labels] + 0.35 * rng.standard_normal((n, 784)), 0, 1).astype(dtype)
    return x, np.eye(10, dtype=dtype)[labels], labels


def fresh(seed=0, dtype=np.float32):
    return TwoLayerNet(784, 20, 10, rng=np.random.default_rng(seed), dtype=dtype)


SGD = dict(batch_size=50, learning_rate=0.1, iterations=70)


def test_one_epoch_is_ceil_n_over_batch_and_checkpoints_fall_on_its_boundaries():
    assert iterations_per_epoch(60000, 100) == 600
    assert iterations_per_epoch(601, 100) == 7
    assert checkpoint_iterations(60000, 100, 10000) == [0] + list(range(600, 10000, 600)) + [10000]
    assert checkpoint_iterations(500, 50, 30) == [0, 10, 20, 30]


@pytest.mark.parametrize("sampling", ["with-replacement", "shuffle"])
def test_same_seed_gives_bit_identical_weights(sampling, kernel):
    x, t, _ = blobs(500, 0)
    nets = [fresh(), fresh()]
    for net in nets:
        train(net, x, t, sampling=sampling, rng=np.random.default_rng(5), **SGD)
    for key in PARAM_NAMES:
        assert nets[0].params[key].tobytes() == nets[1].params[key].tobytes()


@pytest.mark.parametrize("sampling", ["with-replacement", "shuffle"])
def test_resume_from_a_checkpoint_state_is_bit_identical(sampling):
    x, t, _ = blobs(500, 0)
    reference = fresh()
    full_losses = train(reference, x, t, sampling=sampling, rng=np.random.default_rng(5), **SGD)

    saved = {}

    def keep(iteration, losses, net, rng):
        saved[iteration] = ({k: v.copy() for k, v in net.params.items()}, rng.bit_generator.state, losses.copy())

    first, rng = fresh(), np.random.default_rng(5)
    train(first, x, t, sampling=sampling, rng=rng, on_checkpoint=lambda i, l: keep(i, l, first, rng), **SGD)
    assert sorted(saved) == [0, 10, 20, 30, 40, 50, 60, 70]

    params, state, losses = saved[30]
    resumed = TwoLayerNet.from_params({k: v.copy() for k, v in params.items()})
    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = state
    resumed_losses = train(resumed, x, t, sampling=sampling, rng=resumed_rng, start_iteration=30, losses=losses, **SGD)
    for key in PARAM_NAMES:
        assert resumed.params[key].tobytes() == reference.params[key].tobytes()
    assert resumed_losses.tobytes() == full_losses.tobytes()


def test_training_on_learnable_data_beats_chance_by_far(kernel):
    x, t, _ = blobs(2000, 0)
    x_test, _, labels_test = blobs(500, 1)
    net = fresh()
    losses = train(net, x, t, batch_size=100, learning_rate=0.5, iterations=300, sampling="shuffle",
                   rng=np.random.default_rng(0))
    accuracy, loss, predictions = evaluate(net.params, x_test, labels_test, chunk_size=128)
    assert accuracy >= 0.9
    assert losses[-20:].mean() < losses[:20].mean() / 3
    assert accuracy == pytest.approx(net.accuracy(x_test, labels_test))
    assert loss == pytest.approx(net.loss(x_test, labels_test), rel=1e-5)
    matrix = confusion_matrix(labels_test, predictions)
    assert matrix.sum() == 500 and np.trace(matrix) == round(accuracy * 500)


def poisoned(n, bad_row):
    """The sigmoid and the 1e-7 keep the loss bounded for any finite weights, so a NaN pixel
    is the dependable way to make the loss NaN at a known iteration (row 150 is in batch 4
    of the first shuffled epoch below)."""
    x, t, _ = blobs(n, 0)
    x[bad_row, 3] = np.nan
    return x, t


def test_a_nan_loss_stops_training_naming_the_iteration_and_a_hint(kernel):
    x, t = poisoned(200, 150)
    rng = np.random.default_rng(0)
    batch = int(np.nonzero(np.random.default_rng(0).permutation(200) == 150)[0][0]) // 50 + 1
    with pytest.raises(TrainingError, match=rf"iteration {batch}:.*smaller learning_rate than 0.1"):
        train(fresh(), x, t, batch_size=50, learning_rate=0.1, iterations=40, sampling="shuffle", rng=rng)


def test_no_checkpoint_callback_sees_nan_weights():
    x, t = poisoned(200, 150)
    seen = []
    net = fresh()
    with pytest.raises(TrainingError):
        train(net, x, t, batch_size=50, learning_rate=0.1, iterations=40, sampling="shuffle",
              rng=np.random.default_rng(0),
              on_checkpoint=lambda i, l: seen.append(all(np.isfinite(v).all() for v in net.params.values())))
    assert seen and all(seen)


@pytest.mark.parametrize("change, message", [
    (dict(hidden_size=0), "hidden_size=0"),
    (dict(batch_size=-5), "batch_size=-5"),
    (dict(learning_rate=0.0), "learning_rate=0.0"),
    (dict(learning_rate=float("nan")), "learning_rate=nan"),
    (dict(iterations=0), "iterations=0"),
    (dict(dtype="float16"), "dtype='float16'"),
    (dict(sampling="random"), "sampling='random'"),
    (dict(batch_size=1000, train_size=500), "at most the 500 training images"),
    (dict(iterations=5, train_size=1000), "at least one epoch"),
])
def test_invalid_hyperparameters_are_named(change, message):
    args = dict(hidden_size=50, batch_size=100, learning_rate=0.1, iterations=10000, weight_init_std=0.01,
                dtype="float32", sampling="shuffle")
    args.update(change)
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate_hyperparameters(**args)


def test_shuffle_covers_every_image_once_per_epoch_even_with_a_short_last_batch():
    # 530 images in batches of 50: ten full batches and one of 30 per epoch
    batches = _draw_batches(np.random.default_rng(0), "shuffle", 530, 50, 11, 0, 22)
    assert [b.size for b in batches] == ([50] * 10 + [30]) * 2
    for epoch in (batches[:11], batches[11:]):
        assert np.array_equal(np.sort(np.concatenate(epoch)), np.arange(530))
    assert not np.array_equal(np.concatenate(batches[:11]), np.concatenate(batches[11:]))


def test_with_replacement_draws_full_batches_from_the_whole_set():
    batches = _draw_batches(np.random.default_rng(0), "with-replacement", 530, 50, 11, 0, 200)
    drawn = np.concatenate(batches)
    assert len(batches) == 200 and all(b.size == 50 for b in batches)
    assert drawn.min() >= 0 and drawn.max() < 530 and np.unique(drawn).size > 500


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling", ["with-replacement", "shuffle"])
def test_training_is_bit_identical_to_plain_sgd_with_loss_and_gradient(sampling, dtype, kernel, monkeypatch):
    """The fast loop (prefetched rows, fused update, deferred losses) changes no bit of plain SGD:
    for each batch, loss_and_gradient then params -= grads. Small chunks force several
    gathers per segment; 530 rows in batches of 50 give a short batch per epoch."""
    monkeypatch.setattr(training, "CHUNK_ROWS", 120)
    x, t, labels = blobs(530, 0, dtype)
    fast, plain = fresh(dtype=dtype), fresh(dtype=dtype)
    losses = train(fast, x, t, batch_size=50, learning_rate=0.2, iterations=25, sampling=sampling,
                   rng=np.random.default_rng(3))

    rng, expected = np.random.default_rng(3), []
    for first, stop in [(0, 11), (11, 22), (22, 25)]:
        for batch in _draw_batches(rng, sampling, 530, 50, 11, first, stop):
            loss, grads = plain.loss_and_gradient(x[batch], labels[batch], scale=0.2)
            expected.append(loss)
            plain.theta -= plain.backprop(batch.size).flat_grad
    for key in PARAM_NAMES:
        assert fast.params[key].tobytes() == plain.params[key].tobytes()
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert losses[-1] < losses[0]


def test_integer_labels_train_bit_identically_to_one_hot():
    x, t, labels = blobs(400, 0)
    a, b = fresh(), fresh()
    train(a, x, t, sampling="shuffle", rng=np.random.default_rng(1), **SGD)
    train(b, x, labels, sampling="shuffle", rng=np.random.default_rng(1), **SGD)
    for key in PARAM_NAMES:
        assert a.params[key].tobytes() == b.params[key].tobytes()


def slow_chunks_recording_threads(monkeypatch):
    """Make each evaluated chunk take a millisecond and note which thread evaluated it, so
    that threads started together really do share a snapshot's chunks."""
    threads, evaluate_rows = [], evaluation._evaluate_rows

    def recording(*args):
        threads.append(threading.get_ident())
        time.sleep(0.001)
        return evaluate_rows(*args)

    monkeypatch.setattr(evaluation, "_evaluate_rows", recording)
    return threads


def test_a_snapshot_evaluated_by_several_threads_has_the_bits_of_one_thread(monkeypatch):
    x, _, labels = blobs(700, 3)
    net = fresh()
    train(net, x, labels, batch_size=50, learning_rate=0.5, iterations=150, sampling="shuffle",
          rng=np.random.default_rng(0))
    expected_row, expected_predictions = evaluate_snapshot(1.5, 20, net.params, x[:600], labels[:600], x[600:],
                                                           labels[600:], chunk_size=64)
    threads = slow_chunks_recording_threads(monkeypatch)
    work = evaluation._SnapshotWork(1.5, 20, net.params, (x[:600], labels[:600], x[600:], labels[600:]), 64)
    helpers = [threading.Thread(target=work.work) for _ in range(2)]
    for helper in helpers:
        helper.start()
    work.work()
    row, predictions = work.row()
    for helper in helpers:
        helper.join()
    assert len(threads) == 10 + 2 and len(set(threads)) >= 2  # 600 rows in chunks of 64, then 100
    assert row == expected_row and np.array_equal(predictions, expected_predictions)
    accuracy, loss, _ = evaluate(net.params, x[:600], labels[:600], chunk_size=64)
    assert (row["train_accuracy"], row["train_loss"]) == (accuracy, loss)
    assert accuracy == net.accuracy(x[:600], labels[:600]) and accuracy > 0.9
    assert loss == pytest.approx(net.loss(x[:600], labels[:600]), rel=1e-5)


def test_a_failing_chunk_is_raised_by_the_thread_that_waits_for_the_row_instead_of_hanging():
    x, _, labels = blobs(300, 3)
    broken = {key: value.copy() for key, value in fresh().params.items()}
    broken["W2"] = broken["W2"][:5]  # the second layer no longer fits the hidden layer
    work = evaluation._SnapshotWork(0, 0, broken, (x, labels, x, labels), 64)
    helper = threading.Thread(target=lambda: pytest.raises(ValueError, work.work))
    helper.start()
    helper.join()
    with pytest.raises(RuntimeError, match="iteration 0 failed") as raised:
        work.row()
    assert isinstance(raised.value.__cause__, ValueError)


def test_waiting_for_the_background_evaluator_lends_it_the_waiting_thread(monkeypatch):
    x, _, labels = blobs(700, 3)
    threads = slow_chunks_recording_threads(monkeypatch)
    with BackgroundEvaluator(x[:600], labels[:600], x[600:], labels[600:], chunk_size=32) as evaluator:
        evaluator.submit(0, 0, fresh().params)
        (row, _), = evaluator.results()
    assert threading.get_ident() in threads and len(set(threads)) == 2
    assert row == evaluate_snapshot(0, 0, fresh().params, x[:600], labels[:600], x[600:], labels[600:],
                                    chunk_size=32)[0]


def test_the_background_evaluator_gives_evaluate_epochs_rows_in_order_and_raises_its_errors():
    x, _, labels = blobs(700, 3)
    nets = [fresh(seed) for seed in range(3)]
    train(nets[2], x, labels, batch_size=50, learning_rate=0.3, iterations=30, sampling="shuffle",
          rng=np.random.default_rng(0))
    submitted, stored = [], []
    with BackgroundEvaluator(x[:500], labels[:500], x[500:], labels[500:],
                             on_row=lambda row, digest: stored.append((row["iteration"], digest))) as evaluator:
        for k, net in enumerate(nets):
            evaluator.submit(k / 2, k * 7, net.params)
            submitted.append((k / 2, k * 7, {key: value.copy() for key, value in net.params.items()}))
            net.params["W1"][...] = 0  # the evaluator copied the weights when they were submitted
        rows = [row for row, _ in evaluator.results()]
    expected, _ = evaluate_epochs(submitted, x[:500], labels[:500], x[500:], labels[500:])
    assert rows == expected and [row["iteration"] for row in rows] == [0, 7, 14]
    assert rows[2]["train_loss"] < rows[0]["train_loss"]
    assert stored == [(i, params_digest(params)) for _, i, params in submitted]

    def full_disk(row, digest):
        raise OSError(28, "No space left on device")

    with BackgroundEvaluator(x, labels, x, labels, on_row=full_disk) as evaluator:
        evaluator.submit(0, 0, fresh().params)
        with pytest.raises(OSError, match="No space left"):
            evaluator.results()


def test_evaluate_epochs_evaluates_only_the_snapshots_without_kept_figures():
    x, _, labels = blobs(700, 3)
    nets = [fresh(seed) for seed in range(3)]
    train(nets[2], x, labels, batch_size=50, learning_rate=0.3, iterations=30, sampling="shuffle",
          rng=np.random.default_rng(0))
    snapshots = [(k / 2, k * 7, net.params) for k, net in enumerate(nets)]
    rows, confusion = evaluate_epochs(snapshots, x[:500], labels[:500], x[500:], labels[500:])
    marked = [{**rows[0], "train_loss": -1.0}, None, {**rows[2], "train_loss": -2.0}]
    partly, partly_confusion = evaluate_epochs(snapshots, x[:500], labels[:500], x[500:], labels[500:], kept=marked)
    assert partly == [marked[0], rows[1], marked[2]] and np.array_equal(partly_confusion, confusion)
    # every row kept: the training split is not needed at all
    all_kept, all_kept_confusion = evaluate_epochs(snapshots, None, None, x[500:], labels[500:], kept=rows)
    assert all_kept == rows and np.array_equal(all_kept_confusion, confusion)
