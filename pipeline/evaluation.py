"""Accuracy, loss and confusion matrix of a trained network over a whole dataset (numpy only)."""

import hashlib
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.functions import to_indices
from pipeline.network import PARAM_NAMES, forward


CHUNK_ROWS = 10000  # rows evaluated at a time; see BackgroundEvaluator for why not fewer


def evaluate(params, x, t, chunk_size=CHUNK_ROWS):
    """Accuracy and mean cross-entropy of the network `params` over all of x.

    params: dict W1, b1, W2, b2; x: (n, input_size); t: one-hot (n, classes) or integer
    labels (n,). Works through x in chunks of chunk_size rows so that memory stays
    bounded by the chunk, not the dataset.
    Returns (accuracy, mean_loss, predictions (n,) int).
    """
    labels = to_indices(t, params["b2"].size)
    return _combine([_evaluate_rows(params, x[start:stop], labels[start:stop])
                     for start, stop in _spans(x.shape[0], chunk_size)], labels)


def _evaluate_rows(params, x, labels):
    """(predictions, sum of log(p + 1e-7)) over one chunk of rows: every evaluation of the
    product comes here, chunk by chunk, and _combine adds the chunks up in order."""
    y = forward(params, x)
    # the same 1e-7 as cross_entropy_error, summed here and divided once by n in _combine
    log_p = np.log(y[np.arange(x.shape[0]), labels] + 1e-7)
    return np.argmax(y, axis=1), float(np.sum(log_p, dtype=np.float64))


def _combine(chunks, labels):
    """(accuracy, mean loss, predictions) from the _evaluate_rows results of consecutive chunks."""
    predictions = np.concatenate([p for p, _ in chunks]) if chunks else np.empty(0, dtype=np.intp)
    loss_sum = 0.0
    for _, log_p_sum in chunks:  # in chunk order, whichever thread computed which chunk
        loss_sum -= log_p_sum
    n = labels.shape[0]
    return float(np.count_nonzero(predictions == labels)) / n, loss_sum / n, predictions


def _spans(n, chunk_size):
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def confusion_matrix(labels, predictions, n_classes=10):
    """(n_classes, n_classes) counts: rows are the true class, columns the predicted one."""
    labels = np.asarray(labels, dtype=np.intp)
    predictions = np.asarray(predictions, dtype=np.intp)
    counts = np.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def evaluate_snapshot(epoch, iteration, params, x_train, t_train, x_test, t_test, chunk_size=CHUNK_ROWS):
    """The per-epoch row of one network (epoch, iteration, {train,test}_{accuracy,loss}) and its test predictions.

    Training's background evaluation and EvaluateNetwork both come here (or to the
    _SnapshotWork it runs), so a row has the same bits whichever of them computed it."""
    work = _SnapshotWork(epoch, iteration, params, (x_train, t_train, x_test, t_test), chunk_size)
    work.work()
    return work.row()


class _SnapshotWork:
    """The evaluation of one snapshot over the training and test sets, cut into chunks of
    rows that any thread may take: work() takes chunks nobody has taken until none is
    left; row() waits for all of them and combines them in chunk order, so the figures
    have the same bits however the chunks were shared out."""

    def __init__(self, epoch, iteration, params, data, chunk_size):
        x_train, t_train, x_test, t_test = data
        n_classes = params["b2"].size
        self.epoch, self.iteration, self.params = epoch, iteration, params
        self.splits = [(x_train, to_indices(t_train, n_classes)), (x_test, to_indices(t_test, n_classes))]
        self.pieces = [(k, start, stop) for k, (x, _) in enumerate(self.splits)
                       for start, stop in _spans(x.shape[0], chunk_size)]
        self.results = [None] * len(self.pieces)
        self._next = itertools.count()  # next() on it is atomic under the GIL
        self._lock = threading.Lock()
        self._left = len(self.pieces)
        self._error = None
        self._finished = threading.Event()
        if not self.pieces:
            self._finished.set()

    def work(self):
        for i in self._next:
            if i >= len(self.pieces):
                return
            k, start, stop = self.pieces[i]
            x, labels = self.splits[k]
            try:
                self.results[i] = _evaluate_rows(self.params, x[start:stop], labels[start:stop])
            except BaseException as error:
                self._error = error
                self._finished.set()
                raise
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self._finished.set()

    def row(self):
        self._finished.wait()
        if self._error is not None:
            raise RuntimeError(f"evaluating the snapshot of iteration {self.iteration} failed") from self._error
        per_split = [[], []]
        for (k, _, _), result in zip(self.pieces, self.results):
            per_split[k].append(result)
        (train_accuracy, train_loss, _), (test_accuracy, test_loss, test_predictions) = (
            _combine(chunks, labels) for chunks, (_, labels) in zip(per_split, self.splits))
        row = {"epoch": float(self.epoch), "iteration": int(self.iteration),
               "train_accuracy": train_accuracy, "train_loss": train_loss,
               "test_accuracy": test_accuracy, "test_loss": test_loss}
        return row, test_predictions


def evaluate_epochs(snapshots, x_train, t_train, x_test, t_test, chunk_size=CHUNK_ROWS, kept=None):
    """Per-epoch figures for a run: one row per snapshot, in the order given.

    snapshots: (epoch, iteration, params) triples, e.g. loaded checkpoints. kept: one row
    or None per snapshot, figures computed earlier (during training) for these very
    weights; only the snapshots without one are evaluated, so x_train and t_train may be
    None when every snapshot has one. Returns (rows, confusion) where each row holds
    epoch, iteration and the accuracy and mean loss over the whole training and test
    sets, and confusion is the test-set confusion matrix of the last snapshot.
    """
    snapshots = list(snapshots)
    if not snapshots:
        raise ValueError("no snapshots to evaluate")
    rows, predictions = [], None
    for (epoch, iteration, params), row in zip(snapshots, kept or [None] * len(snapshots)):
        predictions = None
        if row is None:
            row, predictions = evaluate_snapshot(epoch, iteration, params, x_train, t_train, x_test, t_test,
                                                 chunk_size)
        rows.append(row)
    params = snapshots[-1][2]
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
    all rows, the calling thread taking a share of the chunks still to evaluate (it has
    nothing else to do by then), and raises the first error of any.

    Chunks are CHUNK_ROWS (10000) rows: every numpy call of this thread takes the GIL
    that training's thread needs between its own calls, and chunks of 2000 rows made
    training wait for it three times as often (3000 waits a run instead of 1000) and
    the whole about 5 % slower; seven chunks a snapshot still share out well at the end.
    """

    def __init__(self, x_train, t_train, x_test, t_test, on_row=None, chunk_size=CHUNK_ROWS):
        self.data = (x_train, t_train, x_test, t_test)
        self.chunk_size = chunk_size
        self.on_row = on_row
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate")
        self.works, self.futures = [], []

    def submit(self, epoch, iteration, params):
        """Queue a snapshot; params are copied now, so training may go on changing its own."""
        params = {key: np.array(params[key], copy=True) for key in PARAM_NAMES}
        work = _SnapshotWork(epoch, iteration, params, self.data, self.chunk_size)
        self.works.append(work)
        self.futures.append(self.pool.submit(self._evaluate, work))

    def _evaluate(self, work):
        work.work()
        row, predictions = work.row()
        if self.on_row is not None:
            self.on_row(row, params_digest(work.params))
        return row, predictions

    def results(self):
        """[(row, test predictions)] in the order submitted, once all are done."""
        for work in self.works:
            work.work()
        return [future.result() for future in self.futures]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)
