"""Accuracy, loss and confusion matrix of a trained network over a whole dataset (numpy only)."""

import numpy as np

from pipeline.functions import to_indices
from pipeline.network import TwoLayerNet


def evaluate(params, x, t, chunk_size=10000):
    """Accuracy and mean cross-entropy of the network `params` over all of x.

    params: dict W1, b1, W2, b2; x: (n, input_size); t: one-hot (n, classes) or integer
    labels (n,). Works through x in chunks of chunk_size rows so that memory stays
    bounded by the chunk, not the dataset.
    Returns (accuracy, mean_loss, predictions (n,) int).
    """
    network = TwoLayerNet.from_params(params)
    n_classes = params["b2"].size
    labels = to_indices(t, n_classes)
    n = x.shape[0]
    predictions = np.empty(n, dtype=np.intp)
    loss_sum = 0.0
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        y = network.predict(x[start:stop])
        predictions[start:stop] = np.argmax(y, axis=1)
        # the same 1e-7 as cross_entropy_error, summed here and divided once by n below
        loss_sum += -float(np.sum(np.log(y[np.arange(stop - start), labels[start:stop]] + 1e-7), dtype=np.float64))
    accuracy = float(np.count_nonzero(predictions == labels)) / n
    return accuracy, loss_sum / n, predictions


def confusion_matrix(labels, predictions, n_classes=10):
    """(n_classes, n_classes) counts: rows are the true class, columns the predicted one."""
    labels = np.asarray(labels, dtype=np.intp)
    predictions = np.asarray(predictions, dtype=np.intp)
    counts = np.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)
