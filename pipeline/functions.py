"""Activation and loss functions of chapter 4, and numerical differentiation (numpy only).

Conventions: `x` an input array, `y` a prediction (probabilities), `t` labels, either one-hot
(same shape as `y`) or integer class indices (one dimension fewer).
"""

import numpy as np

H = 1e-4  # the book's step for central differences


def sigmoid(x):
    """1 / (1 + exp(-x)), elementwise. exp(-x) may overflow to inf for very negative x, which
    gives exactly the limit 0, so that overflow is not warned about."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def sigmoid_grad(x):
    """Derivative of the sigmoid at x: sigmoid(x) * (1 - sigmoid(x))."""
    s = sigmoid(x)
    return (1.0 - s) * s


def softmax(x):
    """Softmax over the last axis of x (n_classes,) or (batch, n_classes).

    The row maximum is subtracted first: the result is unchanged and exp() cannot overflow."""
    x = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=-1, keepdims=True)


def to_indices(t, n_classes):
    """Integer class indices from t, whether one-hot (n, n_classes) or already indices (n,)."""
    t = np.asarray(t)
    if t.ndim == 2 and t.shape[1] == n_classes:
        return np.argmax(t, axis=1)
    return t.astype(np.intp, copy=False)


def cross_entropy_error(y, t):
    """Mean over the batch of the cross-entropy -log(y[true class] + 1e-7).

    y: (batch, n_classes) or (n_classes,); t: one-hot of y's shape, or integer labels.
    The 1e-7 keeps log() finite where a probability underflowed to 0."""
    y, t = np.asarray(y), np.asarray(t)
    if y.ndim == 1:  # one sample: a batch of one
        t = t.reshape(1, -1) if t.size == y.size else t.reshape(1)
        y = y.reshape(1, -1)
    batch_size = y.shape[0]
    t = to_indices(t, y.shape[1])
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


def sum_squares_error(y, t):
    """Half the sum of squared differences (a sum, as in the book, not a mean)."""
    return 0.5 * np.sum((np.asarray(y) - np.asarray(t)) ** 2)


def numerical_diff(f, x):
    """Central difference (f(x + h) - f(x - h)) / 2h of a scalar function at scalar x."""
    return (f(x + H) - f(x - H)) / (2 * H)


def numerical_gradient(f, x):
    """Gradient of the scalar function f at the array x (any shape) by central differences.

    x is perturbed in place one element at a time, so f may read x directly; every element
    is restored afterwards. Returns an array of x's shape and dtype."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        idx = it.multi_index
        tmp_val = x[idx]
        x[idx] = tmp_val + H
        fxh1 = f(x)
        x[idx] = tmp_val - H
        fxh2 = f(x)
        grad[idx] = (fxh1 - fxh2) / (2 * H)
        x[idx] = tmp_val
        it.iternext()
    return grad


def gradient_descent(f, init_x, lr=0.01, step_num=100):
    """x -= lr * grad f(x), step_num times from a copy of init_x; returns the final x."""
    x = np.array(init_x, dtype=float)
    for _ in range(step_num):
        x -= lr * numerical_gradient(f, x)
    return x
