"""TwoLayerNet as the book has it: backprop against the numerical gradient, accuracy, seeding."""

import numpy as np
import pytest

from pipeline.gradient_check import check_gradient, relative_error
from pipeline.network import PARAM_NAMES, TwoLayerNet


def small_problem(seed=0, dtype=np.float64, std=0.5):
    rng = np.random.default_rng(seed)
    net = TwoLayerNet(input_size=12, hidden_size=6, output_size=10, weight_init_std=std, rng=rng, dtype=dtype)
    x = rng.random((5, 12)).astype(dtype)
    t = rng.integers(0, 10, size=5)
    return net, x, t


@pytest.mark.parametrize("std", [0.01, 0.5])
@pytest.mark.parametrize("one_hot", [False, True])
def test_backprop_matches_numerical_gradient_below_1e7_in_float64(std, one_hot):
    net, x, t = small_problem(std=std)
    labels = np.eye(10)[t] if one_hot else t
    backprop = net.gradient(x, labels)
    numerical = net.numerical_gradient(x, labels)
    for key in PARAM_NAMES:
        assert backprop[key].shape == net.params[key].shape
        assert relative_error(backprop[key], numerical[key]) < 1e-7, key


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_rebound_as_the_book_does_give_the_gradient_of_the_new_weights(dtype):
    net, x, t = small_problem(dtype=dtype)
    rng = np.random.default_rng(9)
    for key in PARAM_NAMES:  # the book loads weights by rebinding; float64 arrays into either network
        net.params[key] = rng.standard_normal(net.params[key].shape)
    x = x.astype(np.float64)
    backprop, numerical = net.gradient(x, t), net.numerical_gradient(x, t)
    for key in PARAM_NAMES:
        assert relative_error(backprop[key], numerical[key]) < 1e-7, key


def test_gradient_returns_fresh_arrays_that_a_later_call_leaves_alone():
    net, x, t = small_problem()
    first = net.gradient(x, t)
    kept = {key: value.copy() for key, value in first.items()}
    net.params["W1"] *= 3
    net.gradient(x[:2], t[:2])
    for key in PARAM_NAMES:
        assert np.array_equal(first[key], kept[key])
        assert not np.shares_memory(first[key], net.params[key])


def test_accuracy_compares_predictions_with_labels_not_with_themselves():
    # the seeds' `t = np.argmax(y, ...)` always scored 100 %
    net, x, _ = small_problem()
    predicted = np.argmax(net.predict(x), axis=1)
    wrong = (predicted + 1) % 10
    half = np.concatenate([predicted[:2], wrong[2:]])  # 2 of 5 right
    assert net.accuracy(x, predicted) == 1.0
    assert net.accuracy(x, wrong) == 0.0
    assert net.accuracy(x, half) == pytest.approx(0.4)
    assert net.accuracy(x, np.eye(10)[half]) == pytest.approx(0.4)  # one-hot labels


def test_same_seed_same_weights_in_float32_and_float64():
    a = TwoLayerNet(784, 50, 10, rng=np.random.default_rng(7), dtype=np.float32)
    b = TwoLayerNet(784, 50, 10, rng=np.random.default_rng(7), dtype=np.float32)
    c = TwoLayerNet(784, 50, 10, rng=np.random.default_rng(7), dtype=np.float64)
    for key in PARAM_NAMES:
        assert np.array_equal(a.params[key], b.params[key])
        assert a.params[key].dtype == np.float32 and c.params[key].dtype == np.float64
        np.testing.assert_allclose(a.params[key], c.params[key], rtol=1e-6)
    assert a.params["W1"].shape == (784, 50) and a.params["b2"].shape == (10,)
    assert np.all(a.params["b1"] == 0) and abs(float(np.std(c.params["W1"])) - 0.01) < 5e-4


def test_float32_network_computes_in_float32():
    net, x, t = small_problem(dtype=np.float32)
    assert net.predict(x).dtype == np.float32
    assert all(g.dtype == np.float32 for g in net.gradient(x, t).values())


def test_check_gradient_reports_tiny_error_for_correct_backprop_and_restores_params():
    net, x, t = small_problem()
    before = {k: v.copy() for k, v in net.params.items()}
    report = check_gradient(net, x, t, entries_per_param=20, rng=np.random.default_rng(1))
    assert set(report) == set(PARAM_NAMES)
    assert report["W1"]["entries_checked"] == 20 and report["W1"]["entries_total"] == 72
    assert report["b2"]["entries_checked"] == 10  # smaller than the subset: all of it
    assert max(r["relative_error"] for r in report.values()) < 1e-7
    for key in PARAM_NAMES:
        assert np.array_equal(net.params[key], before[key])


def test_check_gradient_catches_a_broken_backward_pass():
    class BrokenNet(TwoLayerNet):
        def gradient(self, x, t):
            grads = super().gradient(x, t)
            grads["W1"] = grads["W1"] * 1.01  # 1 % off: a classic missing-factor bug
            return grads

    rng = np.random.default_rng(0)
    net = BrokenNet(12, 6, 10, weight_init_std=0.5, rng=rng, dtype=np.float64)
    x, t = rng.random((5, 12)), rng.integers(0, 10, 5)
    report = check_gradient(net, x, t, entries_per_param=72, rng=rng)
    assert report["W1"]["relative_error"] > 1e-3
    assert report["W2"]["relative_error"] < 1e-7


def test_the_numpy_core_imports_neither_luigi_nor_h5py():
    import subprocess
    import sys

    code = ("import sys; import pipeline.functions, pipeline.network, pipeline.training, pipeline.evaluation, "
            "pipeline.gradient_check; print(sorted(m for m in ('luigi', 'h5py') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
