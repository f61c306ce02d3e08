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


def evaluate_epochs(snapshots, x_train, t_train, x_test, t_test, chunk_size=10000):
    """Per-epoch figures for a run: one row per snapshot, in the order given.

    snapshots: iterable of (epoch, iteration, params), e.g. loaded checkpoints.
    Returns (rows, confusion) where each row holds epoch, iteration and the accuracy and
    mean loss over the whole training and test sets, and confusion is the test-set
    confusion matrix of the last snapshot.
    """
    rows, predictions, n_classes = [], None, None
    for epoch, iteration, params in snapshots:
        train_accuracy, train_loss, _ = evaluate(params, x_train, t_train, chunk_size)
        test_accuracy, test_loss, predictions = evaluate(params, x_test, t_test, chunk_size)
        n_classes = params["b2"].size
        rows.append({
            "epoch": float(epoch), "iteration": int(iteration),
            "train_accuracy": train_accuracy, "train_loss": train_loss,
            "test_accuracy": test_accuracy, "test_loss": test_loss,
        })
    if not rows:
        raise ValueError("no snapshots to evaluate")
    return rows, confusion_matrix(to_indices(t_test, n_classes), predictions, n_classes)
