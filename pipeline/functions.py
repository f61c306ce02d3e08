"""Activation and loss functions of chapter 4 (numpy only, no I/O).

Conventions: `x` is an input array, `y` a prediction (probabilities), `t` the labels,
either one-hot (same shape as `y`) or integer class indices (one fewer dimension).
"""

import numpy as np


def sigmoid(x, out=None):
    """Logistic function 1 / (1 + exp(-x)), elementwise; any shape and dtype; `out` as in numpy ufuncs.

    For x below about -88 in float32 (-709 in float64) exp(-x) overflows to inf, and
    1 / (1 + inf) is exactly the sigmoid's limit 0: that overflow is expected, so it is
    not warned about. With `out` (a float array) it runs in place as sigmoid_into does.
    """
    with np.errstate(over="ignore"):
        if out is None:
            return 1 / (1 + np.exp(-x))
        return sigmoid_into(x, out)


def sigmoid_into(x, out, work=None):
    """sigmoid(x) into `out` in four passes: three in `work` (default: out itself; may be x),
    the last into out. Backprop's numpy implementation calls it with a contiguous work
    buffer and a strided out, which is faster than four strided passes. It does not silence
    the overflow of exp(-x): callers run it under np.errstate(over="ignore")."""
    work = out if work is None else work
    np.negative(x, out=work)
    np.exp(work, out=work)
    np.add(work, 1, out=work)
    return np.divide(1, work, out=out)


def sigmoid_grad(x):
    """Derivative of the sigmoid at `x`: sigmoid(x) * (1 - sigmoid(x))."""
    s = sigmoid(x)
    return (1.0 - s) * s


def softmax(x, out=None):
    """Softmax over the last axis. x: (n_classes,) or (batch, n_classes); `out` may be x.

    The row maximum is subtracted first: softmax is unchanged by a constant shift,
    and exp() of the shifted values is at most 1, so it cannot overflow.
    """
    out = np.subtract(x, np.max(x, axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= np.sum(out, axis=-1, keepdims=True)
    return out


def to_indices(t, n_classes):
    """Integer class indices from `t`, whether one-hot (n, n_classes) or already indices (n,)."""
    t = np.asarray(t)
    if t.ndim == 2 and t.shape[1] == n_classes:
        return np.argmax(t, axis=1)
    return t.astype(np.intp, copy=False)


def cross_entropy_error(y, t):
    """Mean cross-entropy over the batch (a sum over classes, a mean over samples).

    y: (batch, n_classes) or (n_classes,) probabilities; t: one-hot of the same shape,
    or integer labels (batch,) or a scalar.
    The 1e-7 keeps log() finite where a probability underflowed to 0.
    """
    y, t = np.asarray(y), np.asarray(t)
    if y.ndim == 1:  # one sample: give it a batch axis so the mean below is over one row
        t = t.reshape(1, -1) if t.size == y.size else t.reshape(1)
        y = y.reshape(1, -1)
    batch_size = y.shape[0]
    t = to_indices(t, y.shape[1])
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


def sum_squares_error(y, t):
    """Half the sum of squared differences; y and t one-hot or probabilities of one shape.

    A sum, not a mean, as in the book (it is shown there for one sample).
    """
    return 0.5 * np.sum((np.asarray(y) - np.asarray(t)) ** 2)
