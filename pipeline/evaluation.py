"""Accuracy, loss and confusion matrix of a trained network over a whole dataset (numpy only)."""

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.functions import sigmoid, softmax, to_indices
from pipeline.network import PARAM_NAMES


def evaluate(params, x, t, chunk_size=10000):
    """Accuracy and mean cross-entropy of the network `params` over all of x.

    params: dict W1, b1, W2, b2; x: (n, input_size); t: one-hot (n, classes) or integer
    labels (n,). Works through x in chunks of chunk_size rows so that memory stays
    bounded by the chunk, not the dataset.
    Returns (accuracy, mean_loss, predictions (n,) int).
    """
    return evaluate_many([params], x, t, chunk_size)[0]


def confusion_matrix(labels, predictions, n_classes=10):
    """(n_classes, n_classes) counts: rows are the true class, columns the predicted one."""
    labels = np.asarray(labels, dtype=np.intp)
    predictions = np.asarray(predictions, dtype=np.intp)
    counts = np.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def evaluate_many(param_sets, x, t, chunk_size=10000, max_columns=1024):
    """evaluate() for several networks of one shape over the same x, in fewer passes.

    The first layers of a group of networks are stacked side by side, so each chunk of x
    is multiplied once by a (input_size, hidden * group) matrix: one large matrix product
    runs faster than many thin ones and reads x once per group instead of once per
    network. Groups hold at most max_columns hidden units (memory: chunk_size x
    max_columns floats). Returns [(accuracy, mean_loss, predictions)] in the given order.
    """
    param_sets = list(param_sets)
    if not param_sets:
        return []
    hidden = param_sets[0]["b1"].size
    n_classes = param_sets[0]["b2"].size
    labels = to_indices(t, n_classes)
    n = x.shape[0]
    group_size = max(1, max_columns // hidden)
    results = []
    for first in range(0, len(param_sets), group_size):
        group = param_sets[first:first + group_size]
        W1 = np.concatenate([p["W1"] for p in group], axis=1)
        b1 = np.concatenate([p["b1"] for p in group])
        predictions = np.empty((len(group), n), dtype=np.intp)
        loss_sums = np.zeros(len(group))
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            a1 = np.dot(x[start:stop], W1)
            a1 += b1
            z1 = sigmoid(a1, out=a1)
            rows = np.arange(stop - start)
            for k, params in enumerate(group):
                a2 = np.dot(z1[:, k * hidden:(k + 1) * hidden], params["W2"])
                a2 += params["b2"]
                y = softmax(a2, out=a2)
                predictions[k, start:stop] = np.argmax(y, axis=1)
                # the same 1e-7 as cross_entropy_error, summed here and divided once by n below
                loss_sums[k] -= float(np.sum(np.log(y[rows, labels[start:stop]] + 1e-7), dtype=np.float64))
        for k in range(len(group)):
            accuracy = float(np.count_nonzero(predictions[k] == labels)) / n
            results.append((accuracy, float(loss_sums[k]) / n, predictions[k]))
    return results


def evaluate_snapshot(epoch, iteration, params, x_train, t_train, x_test, t_test, chunk_size=10000):
    """The per-epoch row of one network (epoch, iteration, {train,test}_{accuracy,loss}) and its test predictions.

    Training's background evaluation and EvaluateNetwork both come here, one network at
    a time, so a row has the same bits whichever of them computed it."""
    (train_accuracy, train_loss, _), = evaluate_many([params], x_train, t_train, chunk_size)
    (test_accuracy, test_loss, test_predictions), = evaluate_many([params], x_test, t_test, chunk_size)
    row = {"epoch": float(epoch), "iteration": int(iteration),
           "train_accuracy": train_accuracy, "train_loss": train_loss,
           "test_accuracy": test_accuracy, "test_loss": test_loss}
    return row, test_predictions


def evaluate_epochs(snapshots, x_train, t_train, x_test, t_test, chunk_size=10000, kept=None):
    """Per-epoch figures for a run: one row per snapshot, in the order given.

    snapshots: iterable of (epoch, iteration, params), e.g. loaded checkpoints.
    kept(iteration, params_digest) -> row or None: figures computed earlier (during
    training) for these very weights; a snapshot it has no row for is evaluated here.
    Returns (rows, confusion) where each row holds epoch, iteration and the accuracy and
    mean loss over the whole training and test sets, and confusion is the test-set
    confusion matrix of the last snapshot.
    """
    rows, predictions, params = [], None, None
    for epoch, iteration, params in snapshots:
        row = kept(int(iteration), params_digest(params)) if kept is not None else None
        if row is None:
            row, predictions = evaluate_snapshot(epoch, iteration, params, x_train, t_train, x_test, t_test,
                                                 chunk_size)
        else:
            predictions = None
        rows.append(row)
    if not rows:
        raise ValueError("no snapshots to evaluate")
    if predictions is None:  # the last row was kept: only its test predictions are needed, for the confusion
        predictions = evaluate(params, x_test, t_test, chunk_size)[2]
    n_classes = params["b2"].size
    return rows, confusion_matrix(to_indices(t_test, n_classes), predictions, n_classes)


def params_digest(params):
    """sha256 of a network's parameters (W1, b1, W2, b2 bytes, with their dtype and shapes)."""
    digest = hashlib.sha256()
    for key in PARAM_NAMES:
        value = np.ascontiguousarray(params[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class BackgroundEvaluator:
    """Evaluates snapshots on a second thread, in the order submitted, while training goes on.

    Evaluating epoch k needs only the weights of epoch k, so with the matrix library on
    one thread each, training keeps one core and the evaluations the other (numpy lets
    go of the GIL inside its array loops and matrix products). on_row(row, digest) is
    called on that thread for each finished row, e.g. to store it; results() waits for
    all rows and raises the first error of any.
    """

    def __init__(self, x_train, t_train, x_test, t_test, on_row=None, chunk_size=10000):
        self.data = (x_train, t_train, x_test, t_test)
        self.chunk_size = chunk_size
        self.on_row = on_row
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate")
        self.futures = []

    def submit(self, epoch, iteration, params):
        """Queue a snapshot; params are copied now, so training may go on changing its own."""
        params = {key: np.array(params[key], copy=True) for key in PARAM_NAMES}
        self.futures.append(self.pool.submit(self._evaluate, epoch, iteration, params))

    def _evaluate(self, epoch, iteration, params):
        row, predictions = evaluate_snapshot(epoch, iteration, params, *self.data, chunk_size=self.chunk_size)
        if self.on_row is not None:
            self.on_row(row, params_digest(params))
        return row, predictions

    def results(self):
        """[(row, test predictions)] in the order submitted, once all are done."""
        return [future.result() for future in self.futures]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)
