"""The C kernel of Backprop (pipeline._kernels) against the numpy implementation, and its guards."""

import shutil
import sysconfig

import numpy as np
import pytest

from pipeline import network
from pipeline.errors import ParameterError
from pipeline.network import PARAM_NAMES, Backprop, TwoLayerNet

needs_c = pytest.mark.skipif("c" not in network.KERNELS, reason="pipeline._kernels was not built")


def test_the_c_kernel_is_built_where_there_is_a_c_compiler():
    """The extension is optional at install, so a broken build would only show as slower
    training: where the compiler Python was built with is present, it must have been built."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) on this machine")
    assert network.KERNELS == ("c", "numpy")


def both_gradients(dtype, std, batch=100, hidden=50, seed=0):
    """(p, flat gradient) of the C kernel and of numpy for one batch of a 784-hidden-10 network."""
    rng = np.random.default_rng(seed)
    net = TwoLayerNet(784, hidden, 10, weight_init_std=std, rng=rng, dtype=dtype)
    net.params["b1"][...] = rng.standard_normal(hidden)
    net.params["b2"][...] = rng.standard_normal(10)
    x = rng.random((batch, 784)).astype(dtype)
    labels = rng.integers(0, 10, batch)
    results = []
    for kernel in ("c", "numpy"):
        backprop = Backprop(net, batch, kernel=kernel)
        p = np.empty(batch, dtype=dtype)
        with np.errstate(over="ignore"):
            backprop.run(x, backprop.targets(labels), p, 0.3)
        results.append((p, backprop.flat_grad.copy()))
    return results


@needs_c
@pytest.mark.parametrize("dtype, rtol, clamped", [(np.float32, 2e-5, 2e-38), (np.float64, 1e-12, 1e-306)])
@pytest.mark.parametrize("batch, hidden, std", [
    (100, 50, 0.01), (100, 50, 1.0), (7, 13, 0.01), (7, 13, 1.0), (1, 1, 1.0),
    (100, 50, 30.0),  # hidden units saturate (a1 beyond +-88), many p below e^-87
])
def test_the_c_kernel_gives_numpys_probabilities_and_gradients_to_rounding(dtype, rtol, clamped, batch, hidden, std):
    """Agreement to rounding: the two differ in their exp (the kernel's is clamped, so where
    numpy's underflows to 0 it gives e^-87 in float32, e^-708 in float64) and in the order of
    their sums, which with logits in the hundreds (std 30) moves p by a few ulp of the logits.
    (A tiny batch at std 30 is left out: all its gradients are below 1e-29, where that clamp
    shows in the last digits.)"""
    (p_c, grad_c), (p_numpy, grad_numpy) = both_gradients(dtype, std, batch, hidden)
    assert p_c.dtype == grad_c.dtype == dtype
    logit_rounding = 100 if std == 30.0 else 1
    np.testing.assert_allclose(p_c, p_numpy, rtol=rtol * logit_rounding, atol=clamped)
    scale = np.abs(grad_numpy).max()
    assert scale > 0
    np.testing.assert_allclose(grad_c, grad_numpy, rtol=0, atol=rtol * scale)


@needs_c
def test_the_c_kernel_gives_the_same_bits_every_time():
    first, second = both_gradients(np.float32, 1.0)[0], both_gradients(np.float32, 1.0)[0]
    assert first[0].tobytes() == second[0].tobytes() and first[1].tobytes() == second[1].tobytes()


@needs_c
def test_a_nan_input_gives_a_nan_probability_in_the_c_kernel():
    """Training stops on a NaN loss: the kernel's clamped exp must not turn NaN into a number."""
    net = TwoLayerNet(784, 50, 10, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).random((100, 784)).astype(np.float32)
    x[17, 5] = np.nan
    backprop = Backprop(net, 100, kernel="c")
    p = np.empty(100, dtype=np.float32)
    backprop.run(x, backprop.targets(np.zeros(100, dtype=int)), p, 0.1)
    assert np.isnan(p[17]) and np.isfinite(np.delete(p, 17)).all()


def kernel_arguments(batch=4, hidden=3, classes=10, dtype=np.float32):
    rng = np.random.default_rng(0)
    return dict(a1=rng.random((batch, hidden)).astype(dtype), b1=np.zeros(hidden, dtype),
                W2b2=rng.random((hidden + 1) * classes).astype(dtype), labels=np.arange(batch, dtype=np.int64),
                scale=0.1, p=np.full(batch, 7, dtype), dz1T=np.full((hidden, batch), 7, dtype),
                g_b1=np.full(hidden, 7, dtype), g_W2b2=np.full((hidden + 1) * classes, 7, dtype),
                work=np.empty((hidden + classes + 2) * batch, dtype))


def read_only(array):
    array.flags.writeable = False
    return array


@needs_c
@pytest.mark.parametrize("change, error, message", [
    (dict(labels=np.array([0, 1, 10, 2], dtype=np.int64)), ValueError, "label 10 of input 2 is not a class in"),
    (dict(labels=np.array([0, -1, 1, 2], dtype=np.int64)), ValueError, "label -1 of input 1"),
    (dict(labels=np.arange(4, dtype=np.int32)), TypeError, "labels must be int64"),
    (dict(a1=np.zeros((4, 3), dtype=np.float16)), TypeError, "a1 must be float32 or float64"),
    (dict(b1=np.zeros(3, dtype=np.float64)), TypeError, "b1 must be float32 like a1"),
    (dict(b1=np.zeros(2, dtype=np.float32)), ValueError, "a1 must hold 8 float32 values"),
    (dict(work=np.empty(10, dtype=np.float32)), ValueError, "work must hold 60 float32 values"),
    (dict(g_W2b2=np.zeros(39, dtype=np.float32)), ValueError, r"g_W2b2 must hold 40 float32 values \(batch 4, "),
    (dict(dz1T=np.zeros((4, 3), dtype=np.float32).T), ValueError, "dz1T must be a C-contiguous, writable array"),
    (dict(g_b1=read_only(np.zeros(3, dtype=np.float32))), ValueError, "g_b1 must be a C-contiguous, writable array"),
    (dict(a1=[[0.5] * 3] * 4), ValueError, "a1 must be a C-contiguous array"),
])
def test_the_c_kernel_refuses_mismatched_arrays_before_writing_anything(change, error, message):
    arguments = kernel_arguments()
    arguments.update(change)
    outputs = {key: arguments[key].copy() for key in ("p", "dz1T", "g_b1", "g_W2b2")}
    with pytest.raises(error, match=message):
        network._kernels.backprop_tail(*arguments.values())
    for key, before in outputs.items():
        assert arguments[key].tobytes() == before.tobytes(), key


def test_an_unknown_kernel_is_a_parameter_error(monkeypatch):
    monkeypatch.setenv("MNIST_PIPELINE_KERNEL", "fortran")
    net = TwoLayerNet(12, 6, 10, rng=np.random.default_rng(0))
    with pytest.raises(ParameterError, match="invalid MNIST_PIPELINE_KERNEL='fortran': must be c or numpy"):
        net.loss_and_gradient(np.zeros((2, 12)), [1, 2])


def test_asking_for_the_c_kernel_where_it_was_not_built_says_how_to_fix_it(monkeypatch):
    monkeypatch.setattr(network, "KERNELS", ("numpy",))
    monkeypatch.setenv("MNIST_PIPELINE_KERNEL", "c")
    with pytest.raises(ParameterError, match="was not built.*reinstall with one, or unset MNIST_PIPELINE_KERNEL"):
        Backprop(TwoLayerNet(12, 6, 10, rng=np.random.default_rng(0)), 2)


def test_without_the_variable_the_c_kernel_is_used_where_built(monkeypatch):
    monkeypatch.delenv("MNIST_PIPELINE_KERNEL", raising=False)
    backprop = Backprop(TwoLayerNet(12, 6, 10, rng=np.random.default_rng(0)), 2)
    assert backprop.kernel == network.KERNELS[0]
    assert set(backprop.grads) == set(PARAM_NAMES)
