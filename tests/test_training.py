"""Mini-batch SGD: the fast step held to the book's gradient, reproducibility, resume,
divergence; per-epoch evaluation on a second thread."""

import numpy as np
import pytest

from fakedata import learnable
from pipeline.errors import TrainingError
from pipeline.evaluation import BackgroundEvaluator, confusion_matrix, evaluate
from pipeline.network import PARAM_NAMES, TwoLayerNet
from pipeline.training import FastSGD, _draw_batches, checkpoint_iterations, iterations_per_epoch, train


def fresh(seed=0, dtype=np.float32, hidden=20):
    return TwoLayerNet(784, hidden, 10, rng=np.random.default_rng(seed), dtype=dtype)


SGD = dict(batch_size=50, learning_rate=0.1, iterations=70)


def test_one_epoch_is_ceil_n_over_batch_and_checkpoints_fall_on_its_boundaries():
    assert iterations_per_epoch(60000, 100) == 600
    assert iterations_per_epoch(601, 100) == 7
    assert checkpoint_iterations(60000, 100, 10000) == [0] + list(range(600, 10000, 600)) + [10000]
    assert checkpoint_iterations(500, 50, 30) == [0, 10, 20, 30]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-4)])
@pytest.mark.parametrize("batch, std", [(100, 0.01), (100, 1.0), (7, 0.5)])
def test_the_fast_step_applies_the_books_gradient(dtype, rtol, batch, std):
    rng = np.random.default_rng(3)
    net = TwoLayerNet(784, 50, 10, weight_init_std=std, rng=rng, dtype=dtype)
    x, labels = learnable(batch, seed=4, dtype=dtype)
    grads = net.gradient(x, labels)
    sgd, p = FastSGD(net.params), np.empty(batch, dtype)
    sgd.step(x, sgd.positions(labels), p, 0.5)
    after = sgd.params()
    for key in PARAM_NAMES:
        step = (net.params[key].astype(np.float64) - after[key]) / 0.5
        np.testing.assert_allclose(step, grads[key], rtol=rtol, atol=rtol * np.abs(grads[key]).max(), err_msg=key)
        assert after[key].dtype == dtype
    np.testing.assert_allclose(-np.mean(np.log(p + 1e-7)), net.loss(x, labels), rtol=rtol)


def test_the_fast_step_gives_the_same_bits_every_time():
    x, labels = learnable(100, seed=4)
    results = []
    for _ in range(2):
        sgd, p = FastSGD(fresh().params), np.empty(100, np.float32)
        for _ in range(5):
            sgd.step(x, sgd.positions(labels), p, 0.3)
        results.append(b"".join(v.tobytes() for v in sgd.params().values()) + p.tobytes())
    assert results[0] == results[1]


@pytest.mark.parametrize("sampling", ["with-replacement", "shuffle"])
def test_same_seed_gives_bit_identical_weights(sampling):
    x, t = learnable(500)
    nets = [fresh(), fresh()]
    for net in nets:
        train(net, x, t, sampling=sampling, rng=np.random.default_rng(5), **SGD)
    for key in PARAM_NAMES:
        assert nets[0].params[key].tobytes() == nets[1].params[key].tobytes()


@pytest.mark.parametrize("sampling", ["with-replacement", "shuffle"])
def test_resume_from_a_checkpoint_state_is_bit_identical(sampling):
    x, t = learnable(500)
    reference = fresh()
    full_losses = train(reference, x, t, sampling=sampling, rng=np.random.default_rng(5), **SGD)

    saved = {}
    first, rng = fresh(), np.random.default_rng(5)

    def keep(iteration, losses):
        saved[iteration] = (first.params, rng.bit_generator.state, losses.copy())

    train(first, x, t, sampling=sampling, rng=rng, on_checkpoint=keep, **SGD)
    assert sorted(saved) == [0, 10, 20, 30, 40, 50, 60, 70]

    params, state, losses = saved[30]
    resumed = TwoLayerNet.from_params(params)
    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = state
    resumed_losses = train(resumed, x, t, sampling=sampling, rng=resumed_rng, start_iteration=30, losses=losses, **SGD)
    for key in PARAM_NAMES:
        assert resumed.params[key].tobytes() == reference.params[key].tobytes()
    assert resumed_losses.tobytes() == full_losses.tobytes()


@pytest.mark.parametrize("sampling", ["with-replacement", "shuffle"])
def test_training_is_plain_sgd_with_the_books_gradient(sampling):
    """530 rows in batches of 50: a short last batch per epoch with shuffling."""
    x, labels = learnable(530, dtype=np.float64)
    fast, plain = fresh(dtype=np.float64), fresh(dtype=np.float64)
    losses = train(fast, x, labels, batch_size=50, learning_rate=0.2, iterations=25, sampling=sampling,
                   rng=np.random.default_rng(3))
    rng, expected = np.random.default_rng(3), []
    for first, stop in [(0, 11), (11, 22), (22, 25)]:
        for batch in _draw_batches(rng, sampling, 530, 50, 11, first, stop):
            expected.append(plain.loss(x[batch], labels[batch]))
            grads = plain.gradient(x[batch], labels[batch])
            for key in PARAM_NAMES:
                plain.params[key] -= 0.2 * grads[key]
    for key in PARAM_NAMES:
        np.testing.assert_allclose(fast.params[key], plain.params[key], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(losses, expected, rtol=1e-9)


def test_training_on_learnable_data_beats_chance_by_far():
    x, t = learnable(2000, seed=0)
    x_test, labels_test = learnable(500, seed=1)
    net = fresh()
    losses = train(net, x, t, batch_size=100, learning_rate=0.5, iterations=300, sampling="shuffle",
                   rng=np.random.default_rng(0))
    accuracy, loss, predictions = evaluate(net.params, x_test, labels_test, chunk_size=128)
    assert accuracy >= 0.9
    assert losses[-20:].mean() < losses[:20].mean() / 3
    assert accuracy == pytest.approx(net.accuracy(x_test, labels_test))
    assert loss == pytest.approx(net.loss(x_test, labels_test), rel=1e-5)
    matrix = confusion_matrix(labels_test, predictions, 10)
    assert matrix.sum() == 500 and np.trace(matrix) == round(accuracy * 500)


def test_integer_labels_train_bit_identically_to_one_hot():
    x, labels = learnable(400)
    a, b = fresh(), fresh()
    train(a, x, np.eye(10, dtype=np.float32)[labels], sampling="shuffle", rng=np.random.default_rng(1), **SGD)
    train(b, x, labels, sampling="shuffle", rng=np.random.default_rng(1), **SGD)
    for key in PARAM_NAMES:
        assert a.params[key].tobytes() == b.params[key].tobytes()


def test_a_nan_loss_stops_training_naming_the_iteration_and_a_hint():
    x, t = learnable(200)
    x[150, 3] = np.nan  # the sigmoid and the 1e-7 keep the loss finite for any finite weights
    batch = int(np.nonzero(np.random.default_rng(0).permutation(200) == 150)[0][0]) // 50 + 1
    with pytest.raises(TrainingError, match=rf"iteration {batch}:.*smaller learning_rate than 0.1"):
        train(fresh(), x, t, batch_size=50, learning_rate=0.1, iterations=40, sampling="shuffle",
              rng=np.random.default_rng(0))


@pytest.mark.parametrize("learning_rate, message", [(1e30, "W1 reached"), (60.0, "times the first batch")])
def test_a_run_that_blows_up_without_a_nan_is_stopped_as_diverged(learning_rate, message):
    x, t = learnable(500)
    seen = []
    net = fresh()
    with pytest.raises(TrainingError, match=message + r".*diverged; try a smaller learning_rate"):
        train(net, x, t, batch_size=50, learning_rate=learning_rate, iterations=200, sampling="shuffle",
              rng=np.random.default_rng(0), on_checkpoint=lambda i, losses: seen.append(i))
    assert seen == [0]  # no diverged state reaches a checkpoint


def test_shuffle_covers_every_image_once_per_epoch_even_with_a_short_last_batch():
    batches = _draw_batches(np.random.default_rng(0), "shuffle", 530, 50, 11, 0, 22)
    assert [b.size for b in batches] == ([50] * 10 + [30]) * 2
    for epoch in (batches[:11], batches[11:]):
        assert np.array_equal(np.sort(np.concatenate(epoch)), np.arange(530))
    assert not np.array_equal(np.concatenate(batches[:11]), np.concatenate(batches[11:]))


def test_the_background_evaluator_gives_the_rows_of_evaluate_in_order():
    x, labels = learnable(700, seed=3)
    nets = [fresh(seed) for seed in range(3)]
    train(nets[2], x, labels, batch_size=50, learning_rate=0.3, iterations=30, sampling="shuffle",
          rng=np.random.default_rng(0))
    with BackgroundEvaluator(x[:500], labels[:500], x[500:], labels[500:], 10, chunk_size=64) as evaluator:
        for k, net in enumerate(nets):
            evaluator.submit(k / 2, k * 7, net.params)
        rows = evaluator.results()
    assert [row["iteration"] for row in rows] == [0, 7, 14]
    for row, net in zip(rows, nets):
        train_accuracy, train_loss, _ = evaluate(net.params, x[:500], labels[:500], chunk_size=64)
        test_accuracy, test_loss, _ = evaluate(net.params, x[500:], labels[500:], chunk_size=64)
        assert (row["train_accuracy"], row["train_loss"], row["test_accuracy"], row["test_loss"]) == (
            train_accuracy, train_loss, test_accuracy, test_loss)
    assert rows[2]["train_loss"] < rows[0]["train_loss"]


def test_the_background_evaluator_raises_an_evaluation_error_instead_of_hanging():
    x, labels = learnable(300, seed=3)
    broken = fresh().params
    broken["W2"] = broken["W2"][:5]  # the second layer no longer fits the hidden layer
    with BackgroundEvaluator(x, labels, x, labels, 10, chunk_size=64) as evaluator:
        evaluator.submit(0, 0, broken)
        with pytest.raises(ValueError):
            evaluator.results()
