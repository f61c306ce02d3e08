"""TwoLayerNet of chapter 4: affine -> sigmoid -> affine -> softmax, with cross-entropy loss.

numpy only. Names follow the book: x inputs (batch, input_size), t labels (one-hot
(batch, output_size) or integers (batch,)), params and grads keyed W1, b1, W2, b2.
"""

import numpy as np

from pipeline.functions import cross_entropy_error, numerical_gradient, sigmoid, sigmoid_grad, softmax, to_indices

PARAM_NAMES = ("W1", "b1", "W2", "b2")


class TwoLayerNet:
    """params: W1 (input, hidden), b1 (hidden,), W2 (hidden, output), b2 (output,).

    Weights start as weight_init_std * standard normal draws from rng (in float64, then cast
    to dtype, so a seed gives the same start in either dtype); biases start at zero. Every
    method reads self.params afresh: change a parameter in place or rebind it, both work.
    """

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, rng=None, dtype=np.float32):
        rng = np.random.default_rng() if rng is None else rng
        self.params = {
            "W1": (weight_init_std * rng.standard_normal((input_size, hidden_size))).astype(dtype),
            "b1": np.zeros(hidden_size, dtype=dtype),
            "W2": (weight_init_std * rng.standard_normal((hidden_size, output_size))).astype(dtype),
            "b2": np.zeros(output_size, dtype=dtype),
        }

    @classmethod
    def from_params(cls, params):
        """A network holding copies of existing parameters (e.g. a checkpoint's)."""
        net = cls.__new__(cls)
        net.params = {key: np.array(params[key]) for key in PARAM_NAMES}
        return net

    @property
    def sizes(self):
        """(input_size, hidden_size, output_size)."""
        return self.params["W1"].shape + self.params["b2"].shape

    def predict(self, x):
        """Class probabilities (batch, output_size) for inputs x (batch, input_size)."""
        return predict(self.params, x)

    def loss(self, x, t):
        """Mean cross-entropy over the batch."""
        return cross_entropy_error(self.predict(x), t)

    def accuracy(self, x, t):
        """Fraction of samples whose most probable class is the label (argmax of t when
        one-hot, t itself when integers; never argmax of the prediction)."""
        y = np.argmax(self.predict(x), axis=1)
        t = to_indices(t, self.params["b2"].size)
        return float(np.sum(y == t)) / x.shape[0]

    def numerical_gradient(self, x, t):
        """Gradient of the loss by central differences, keyed like params: exact to the book, slow."""

        def loss_W(W):  # W is perturbed in place inside self.params, so loss() sees it
            return self.loss(x, t)

        return {key: numerical_gradient(loss_W, self.params[key]) for key in PARAM_NAMES}

    def gradient(self, x, t):
        """Gradient of the loss by backpropagation: new arrays keyed like params."""
        W1, b1, W2, b2 = (self.params[key] for key in PARAM_NAMES)
        batch_num = x.shape[0]
        rows, labels = np.arange(batch_num), to_indices(t, b2.size)

        # forward
        a1 = np.dot(x, W1) + b1
        z1 = sigmoid(a1)
        a2 = np.dot(z1, W2) + b2
        y = softmax(a2)

        # backward
        p = y[rows, labels]  # the loss is -log(p + 1e-7): its exact derivative carries p / (p + 1e-7)
        dy = y.copy()
        dy[rows, labels] -= 1  # y - t
        dy *= (p / (p + 1e-7))[:, np.newaxis] / batch_num
        grads = {"W2": np.dot(z1.T, dy), "b2": np.sum(dy, axis=0)}
        dz1 = np.dot(dy, W2.T)
        da1 = sigmoid_grad(a1) * dz1
        grads["W1"] = np.dot(x.T, da1)
        grads["b1"] = np.sum(da1, axis=0)
        return {key: grads[key] for key in PARAM_NAMES}


def predict(params, x):
    """Class probabilities (batch, output_size) of the network `params` for inputs x."""
    a1 = np.dot(x, params["W1"]) + params["b1"]
    z1 = sigmoid(a1)
    a2 = np.dot(z1, params["W2"]) + params["b2"]
    return softmax(a2)
