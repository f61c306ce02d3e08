"""Numerical differentiation and gradient descent of chapter 4 (numpy only).

Slow by design: one pair of function evaluations per element. The product uses it to
check backpropagation (CheckGradient), never to train.
"""

import numpy as np

H = 1e-4  # the book's step: small enough for accuracy, large enough for float64 rounding


def numerical_diff(f, x):
    """Central difference (f(x + h) - f(x - h)) / 2h of a scalar function at scalar x."""
    return (f(x + H) - f(x - H)) / (2 * H)


def numerical_gradient(f, x):
    """Gradient of the scalar function f at the array x (any shape), by central differences.

    f is called as f(x) with x perturbed in place, one element at a time, so f may read
    x directly (as TwoLayerNet's loss reads its own parameters); every element is restored
    to its original value afterwards. Returns an array of x's shape and dtype.
    """
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
    """Minimise f from init_x by step_num steps of x -= lr * grad f(x). Returns the final x.

    init_x is copied, not modified.
    """
    x = np.array(init_x, dtype=float)
    for _ in range(step_num):
        x -= lr * numerical_gradient(f, x)
    return x
