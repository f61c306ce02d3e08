"""TwoLayerNet of chapter 4: affine -> sigmoid -> affine -> softmax, cross-entropy loss.

numpy only, no I/O. Names follow the book so the code can be read beside it:
`x` inputs (batch, input_size), `t` labels (one-hot (batch, output_size) or integer
(batch,)), `params` and `grads` keyed W1, b1, W2, b2, intermediates a1, z1, a2, y.
"""

import numpy as np

from pipeline.functions import cross_entropy_error, sigmoid, softmax, to_indices
from pipeline.gradient import numerical_gradient

PARAM_NAMES = ("W1", "b1", "W2", "b2")


class TwoLayerNet:
    """A two-layer network whose parameters live in `self.params` (a dict of arrays).

    dtype: float32 for training speed, float64 for gradient checking. The initial
    weights are weight_init_std * standard normal draws from `rng` (a numpy Generator),
    drawn in float64 and then cast, so a seed gives the same starting point in either
    dtype; biases start at zero.
    """

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, rng=None, dtype=np.float32):
        rng = np.random.default_rng() if rng is None else rng
        dtype = np.dtype(dtype)
        self.params = {
            "W1": (weight_init_std * rng.standard_normal((input_size, hidden_size))).astype(dtype),
            "b1": np.zeros(hidden_size, dtype=dtype),
            "W2": (weight_init_std * rng.standard_normal((hidden_size, output_size))).astype(dtype),
            "b2": np.zeros(output_size, dtype=dtype),
        }

    @classmethod
    def from_params(cls, params):
        """A network around existing parameters (e.g. loaded from a checkpoint); no copy."""
        net = cls.__new__(cls)
        net.params = {key: params[key] for key in PARAM_NAMES}
        return net

    @property
    def dtype(self):
        return self.params["W1"].dtype

    def predict(self, x):
        """Class probabilities, (batch, output_size), for inputs x (batch, input_size)."""
        W1, W2 = self.params["W1"], self.params["W2"]
        b1, b2 = self.params["b1"], self.params["b2"]

        a1 = np.dot(x, W1)
        a1 += b1
        z1 = sigmoid(a1, out=a1)  # in place: a1 is not needed again
        a2 = np.dot(z1, W2)
        a2 += b2
        return softmax(a2, out=a2)

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

        The loss is the mean cross-entropy of this batch before any update: training
        records it instead of running a second forward pass after the update. Training
        passes its learning rate as `scale`, so that the update is one subtraction.

        This is training's hot path, so every intermediate lives in a buffer kept for
        the batch size: allocating the 784 x hidden gradient afresh each step costs more
        than computing it (large blocks come from mmap and fault in page by page). The
        returned grads are those buffers: read them before the next call.
        """
        W1, W2 = self.params["W1"], self.params["W2"]
        b1, b2 = self.params["b1"], self.params["b2"]
        batch_num = x.shape[0]
        buf = self._buffers(batch_num)
        labels = to_indices(t, b2.size)
        rows = buf["rows"]

        # forward
        a1 = np.dot(x, W1, out=buf["a1"])
        a1 += b1
        z1 = sigmoid(a1, out=buf["z1"])
        a2 = np.dot(z1, W2, out=buf["a2"])
        a2 += b2
        y = softmax(a2, out=a2)
        p = y[rows, labels]  # probability given to the true class (a copy)
        loss = -np.sum(np.log(p + 1e-7)) / batch_num

        # backward
        # Softmax with cross-entropy: dL/da2 = (y - t) / batch, times p / (p + 1e-7), the
        # exact derivative of the loss's log(p + 1e-7); without that factor backprop is off
        # by about 1e-6 relative, more than a gradient check should tolerate.
        dy = y  # y is not needed again: reuse its memory
        dy[rows, labels] -= 1
        dy *= (p / (p + 1e-7) * (scale / batch_num)).astype(dy.dtype)[:, np.newaxis]
        grads = buf["grads"]
        np.dot(z1.T, dy, out=grads["W2"])
        np.sum(dy, axis=0, out=grads["b2"])
        dz1 = np.dot(dy, W2.T, out=buf["dz1"])
        da1 = dz1  # sigmoid'(a1) * dz1 = z1 (1 - z1) dz1, in place; a1 is free to hold 1 - z1
        np.subtract(1.0, z1, out=a1)
        a1 *= z1
        da1 *= a1
        np.dot(x.T, da1, out=grads["W1"])
        np.sum(da1, axis=0, out=grads["b1"])
        return float(loss), grads

    def _buffers(self, batch_num):
        """Work arrays for a batch size, made on its first use and kept."""
        workspace = self.__dict__.setdefault("_workspace", {})
        buffers = workspace.get(batch_num)
        if buffers is None or buffers["a1"].dtype != self.dtype:
            hidden, output = self.params["W2"].shape
            empty = lambda *shape: np.empty(shape, dtype=self.dtype)  # noqa: E731
            buffers = {
                "rows": np.arange(batch_num),
                "a1": empty(batch_num, hidden), "z1": empty(batch_num, hidden), "dz1": empty(batch_num, hidden),
                "a2": empty(batch_num, output),
                "grads": {key: np.empty_like(self.params[key]) for key in PARAM_NAMES},
            }
            workspace[batch_num] = buffers
        return buffers
