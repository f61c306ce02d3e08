"""TwoLayerNet of chapter 4: affine -> sigmoid -> affine -> softmax, cross-entropy loss.

numpy only, no I/O. Names follow the book so the code can be read beside it:
`x` inputs (batch, input_size), `t` labels (one-hot (batch, output_size) or integer
(batch,)), `params` and `grads` keyed W1, b1, W2, b2, intermediates a1, z1, a2, y.
"""

import os

import numpy as np

from pipeline.errors import ParameterError
from pipeline.functions import cross_entropy_error, sigmoid, sigmoid_into, softmax, to_indices
from pipeline.gradient import numerical_gradient

try:
    from pipeline import _kernels
except ImportError:  # the optional C extension was not built (no compiler at install): numpy does it all
    _kernels = None

PARAM_NAMES = ("W1", "b1", "W2", "b2")


class TwoLayerNet:
    """A two-layer network whose parameters live in `self.params` (a dict of arrays).

    dtype: float32 for training speed, float64 for gradient checking. The initial
    weights are weight_init_std * standard normal draws from `rng` (a numpy Generator),
    drawn in float64 and then cast, so a seed gives the same starting point in either
    dtype; biases start at zero.

    The four parameters are views of one flat array, `self.theta`, laid out W1, b1, W2,
    b2: one subtraction of the flat gradient updates every parameter, and W2 with b2
    below it is the (hidden + 1, output_size) matrix that multiplies hidden activations
    with a constant 1 appended, which folds the second bias into the matrix product.
    Change parameters in place (`params["W1"][...] = ...`), never by rebinding the dict
    entries.
    """

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, rng=None, dtype=np.float32):
        rng = np.random.default_rng() if rng is None else rng
        W1 = weight_init_std * rng.standard_normal((input_size, hidden_size))
        W2 = weight_init_std * rng.standard_normal((hidden_size, output_size))
        self._pack({"W1": W1, "b1": np.zeros(hidden_size), "W2": W2, "b2": np.zeros(output_size)}, dtype)

    @classmethod
    def from_params(cls, params):
        """A network holding a copy of existing parameters (e.g. loaded from a checkpoint), in W1's dtype."""
        net = cls.__new__(cls)
        net._pack(params, np.asarray(params["W1"]).dtype)
        return net

    def _pack(self, params, dtype):
        (input_size, hidden_size), output_size = np.shape(params["W1"]), np.shape(params["b2"])[0]
        self.theta = np.empty(_n_params(input_size, hidden_size, output_size), dtype=dtype)
        self.params = _views(self.theta, input_size, hidden_size, output_size)
        for key in PARAM_NAMES:
            if np.shape(params[key]) != self.params[key].shape:
                raise ValueError(f"{key} has shape {np.shape(params[key])}, expected {self.params[key].shape}")
            self.params[key][...] = params[key]

    @property
    def dtype(self):
        return self.theta.dtype

    @property
    def sizes(self):
        """(input_size, hidden_size, output_size)."""
        return self.params["W1"].shape + self.params["b2"].shape

    def predict(self, x):
        """Class probabilities, (batch, output_size), for inputs x (batch, input_size)."""
        return forward(self.params, x)

    def loss(self, x, t):
        """Mean cross-entropy over the batch."""
        return cross_entropy_error(self.predict(x), t)

    def accuracy(self, x, t):
        """Fraction of samples whose most probable class is the label.

        The label's class is argmax of t when t is one-hot, t itself when it holds
        integers; never argmax of the prediction (the seeds' bug that scored 100 %).
        """
        y = np.argmax(self.predict(x), axis=1)
        t = to_indices(t, self.params["b2"].size)
        return float(np.sum(y == t)) / x.shape[0]

    def numerical_gradient(self, x, t):
        """Gradient of the loss by central differences: exact to the book and very slow."""

        def loss_W(W):  # W is perturbed in place inside self.params, so loss() sees it
            return self.loss(x, t)

        return {key: numerical_gradient(loss_W, self.params[key]) for key in PARAM_NAMES}

    def gradient(self, x, t):
        """Gradient of the loss by backpropagation, keyed like params."""
        return self.loss_and_gradient(x, t)[1]

    def loss_and_gradient(self, x, t, scale=1.0):
        """(loss, grads) from one forward and one backward pass, grads multiplied by `scale`.

        The loss is the mean cross-entropy of this batch before any update. The gradient
        comes from the same Backprop that training runs (CheckGradient checks this one).
        The returned grads are views of a buffer reused by the next call: read them first.
        """
        x = np.asarray(x)
        batch_num = x.shape[0]
        backprop = self.backprop(batch_num)
        p = np.empty(batch_num, dtype=self.dtype)
        with np.errstate(over="ignore"):
            backprop.run(np.ascontiguousarray(x, dtype=self.dtype),
                         backprop.targets(to_indices(t, self.params["b2"].size)), p, scale)
        loss = -np.sum(np.log(p + 1e-7)) / batch_num
        return float(loss), backprop.grads

    def backprop(self, batch_num):
        """The Backprop of this network for a batch size, made on its first use and kept."""
        kept = self.__dict__.setdefault("_backprops", {})
        if batch_num not in kept:
            kept[batch_num] = Backprop(self, batch_num)
        return kept[batch_num]


def forward(params, x):
    """Class probabilities, (batch, output_size), of the network `params` (W1, b1, W2, b2) for inputs x."""
    a1 = np.dot(x, params["W1"])
    a1 += params["b1"]
    z1 = sigmoid(a1, out=a1)  # in place: a1 is not needed again
    a2 = np.dot(z1, params["W2"])
    a2 += params["b2"]
    return softmax(a2, out=a2)


class Backprop:
    """Forward and backward pass of a TwoLayerNet for one batch size: training's hot path.

    run(x, targets, p, scale) takes a batch of inputs x (batch, input_size) in the
    network's dtype, leaves the gradient of the batch's mean cross-entropy, times
    `scale`, in `flat_grad` (laid out like the network's theta, so `theta -= flat_grad`
    is one SGD step) and the probability each input gives its true class in `p`.
    targets = targets(labels). Call it under np.errstate(over="ignore"): numpy's
    sigmoid overflows exp(-a1) to inf for a1 below about -88 in float32, which gives
    exactly the sigmoid's limit 0.

    Two implementations of the same arithmetic, `kernel`:
    - "c": the two large matrix products in numpy (x W1 and x^T dz1) and everything
      between them in one call to pipeline._kernels.backprop_tail (C, built at install
      when a compiler is there); numpy's per-call cost, 1.5 to 2 microseconds, rivals
      the work of each of the twenty-odd small operations it replaces.
    - "numpy": numpy calls only, written for speed: every intermediate lives in a buffer
      made once; the hidden activations carry a column of ones, so b2 rides in the
      second layer's matrix products ([W2; b2] is one block of theta); the second layer
      works on transposed activations (classes x batch) so that the softmax's reductions
      run along memory; the learning rate and 1 / batch are folded into dL/da2.
    They agree to float rounding (their exp and their order of sums differ), and each
    gives the same bits every time on a given machine. Allocating the 784 x hidden
    gradient afresh each step costs more than computing it (large blocks come from mmap
    and fault in page by page), hence the buffers.
    """

    def __init__(self, network, batch_num, kernel=None):
        self.kernel = default_kernel() if kernel is None else _checked_kernel(kernel)
        self.batch_num = batch_num
        self.flat_grad = np.empty_like(network.theta)
        self.grads = _views(self.flat_grad, *network.sizes)
        make_run = self._make_c_run if self.kernel == "c" else self._make_numpy_run
        self.run = make_run(network, batch_num)

    def targets(self, labels):
        """The labels in the form run() takes them. labels: integer classes, (batch,) or (steps, batch)
        for several batches at once (run() then takes one row of the result per batch).

        For the C kernel, the labels as int64; for numpy, where each true class sits in the
        flattened (classes, batch) output: label * batch + row."""
        labels = np.asarray(labels)
        if self.kernel == "c":
            return labels.astype(np.int64)
        return labels.astype(np.intp) * self.batch_num + np.arange(self.batch_num)

    def _make_c_run(self, network, batch_num):
        _, hidden, output = network.sizes
        dtype = network.dtype
        W1, b1 = network.params["W1"], network.params["b1"]
        W2b2, g_W2b2 = _second_layer(network.theta, network.sizes), _second_layer(self.flat_grad, network.sizes)
        g_W1, g_b1 = self.grads["W1"], self.grads["b1"]
        a1 = np.empty((batch_num, hidden), dtype=dtype)
        dz1T = np.empty((hidden, batch_num), dtype=dtype)
        work = np.empty((hidden + output + 2) * batch_num, dtype=dtype)
        tail, dot = _kernels.backprop_tail, np.dot

        def run(x, labels, p, scale):
            dot(x, W1, out=a1)
            tail(a1, b1, W2b2, labels, scale, p, dz1T, g_b1, g_W2b2, work)
            dot(x.T, dz1T.T, out=g_W1)

        return run

    def _make_numpy_run(self, network, batch_num):
        _, hidden, output = network.sizes
        dtype = network.dtype
        params, grads = network.params, self.grads
        W1, b1, W2 = params["W1"], params["b1"], params["W2"]
        g_W1, g_b1 = grads["W1"], grads["b1"]
        W2b2, g_W2b2 = _second_layer(network.theta, network.sizes), _second_layer(self.flat_grad, network.sizes)
        a1, dz1, work = (np.empty((batch_num, hidden), dtype=dtype) for _ in range(3))
        z1_ones = np.ones((batch_num, hidden + 1), dtype=dtype)  # [z1 1]
        z1 = z1_ones[:, :-1]
        y = np.empty((output, batch_num), dtype=dtype)  # transposed: one row per class
        y_flat = y.reshape(-1)
        column_max, column_sum, factor = (np.empty(batch_num, dtype=dtype) for _ in range(3))

        def run(x, positions, p, scale):
            # forward: z1 = sigmoid(x W1 + b1)
            np.dot(x, W1, out=a1)
            np.add(a1, b1, out=a1)
            sigmoid_into(a1, z1, work=a1)
            # a2 = [z1 1] [W2; b2] and softmax, transposed: (output, batch)
            np.dot(W2b2.T, z1_ones.T, out=y)
            np.maximum.reduce(y, axis=0, out=column_max)  # shifted so that exp cannot overflow
            np.subtract(y, column_max, out=y)
            np.exp(y, out=y)
            np.add.reduce(y, axis=0, out=column_sum)
            np.divide(y, column_sum, out=y)
            np.take(y_flat, positions, out=p)  # probability of the true class
            # backward. Softmax with cross-entropy: dL/da2 = (y - t) / batch, times p / (p + 1e-7),
            # the exact derivative of the loss's log(p + 1e-7): without that factor backprop is off
            # by about 1e-6 relative, more than a gradient check should tolerate.
            dy = y
            y_flat[positions] -= 1
            np.add(p, 1e-7, out=factor)
            np.divide(p, factor, out=factor)
            np.multiply(factor, scale / batch_num, out=factor)
            np.multiply(dy, factor, out=dy)
            np.dot(z1_ones.T, dy.T, out=g_W2b2)  # dW2 and, from the column of ones, db2
            np.dot(dy.T, W2.T, out=dz1)
            # sigmoid'(a1) = z1 (1 - z1) = z1 - z1^2
            np.multiply(z1, z1, out=work)
            np.subtract(z1, work, out=work)
            np.multiply(dz1, work, out=dz1)
            np.dot(x.T, dz1, out=g_W1)
            np.add.reduce(dz1, axis=0, out=g_b1)

        return run


KERNELS = ("c", "numpy") if _kernels is not None else ("numpy",)
KERNEL_VARIABLE = "MNIST_PIPELINE_KERNEL"


def default_kernel():
    """The Backprop implementation to use: $MNIST_PIPELINE_KERNEL if set ("c" or "numpy"),
    otherwise "c" where pipeline._kernels was built and "numpy" where it was not."""
    chosen = os.environ.get(KERNEL_VARIABLE, "")
    return _checked_kernel(chosen) if chosen else KERNELS[0]


def _checked_kernel(kernel):
    if kernel not in ("c", "numpy"):
        raise ParameterError(f"invalid {KERNEL_VARIABLE}={kernel!r}: must be c or numpy")
    if kernel not in KERNELS:
        raise ParameterError(f"{KERNEL_VARIABLE}=c, but the C extension pipeline._kernels was not built "
                             f"(no C compiler when the package was installed?): reinstall with one, "
                             f"or unset {KERNEL_VARIABLE} to use numpy")
    return kernel


def _n_params(input_size, hidden_size, output_size):
    return (input_size + 1) * hidden_size + (hidden_size + 1) * output_size


def _second_layer(flat, sizes):
    """[W2; b2] of a flat array laid out like theta, as one (hidden + 1, output) matrix: they come last."""
    _, hidden_size, output_size = sizes
    return flat[-(hidden_size + 1) * output_size:].reshape(hidden_size + 1, output_size)


def _views(flat, input_size, hidden_size, output_size):
    """W1, b1, W2, b2 as views of a flat array laid out in that order."""
    shapes = {"W1": (input_size, hidden_size), "b1": (hidden_size,),
              "W2": (hidden_size, output_size), "b2": (output_size,)}
    views, start = {}, 0
    for key in PARAM_NAMES:
        size = int(np.prod(shapes[key]))
        views[key] = flat[start:start + size].reshape(shapes[key])
        start += size
    return views
