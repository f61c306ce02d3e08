"""Accuracy, loss and confusion matrix of a network over whole datasets (numpy only).

Every figure is added up from chunks of rows in chunk order, so its bits do not depend on
which thread evaluated which chunk.
"""

import itertools
import queue
import threading

import numpy as np

from pipeline.functions import to_indices
from pipeline.network import predict

CHUNK_ROWS = 10000
EPOCH_COLUMNS = ("epoch", "iteration", "train_accuracy", "test_accuracy", "train_loss", "test_loss")
VALIDATION_COLUMNS = ("validation_accuracy", "validation_loss")  # after EPOCH_COLUMNS, with a validation split
VALIDATION = 2  # the index of the validation split among an evaluator's splits (train, test, validation)


def epoch_columns(rows):
    """The columns of these evaluation rows: EPOCH_COLUMNS, then VALIDATION_COLUMNS when the
    first row has them (every row of one run has the same columns)."""
    rows = list(rows)
    return EPOCH_COLUMNS + (VALIDATION_COLUMNS if rows and VALIDATION_COLUMNS[0] in rows[0] else ())


def evaluate(params, x, t, chunk_size=CHUNK_ROWS, probabilities=False):
    """(accuracy, mean cross-entropy, predictions (n,)) of the network `params` over all of x,
    and with probabilities=True also the softmax outputs (n, classes) they came from.

    x (n, input_size); t one-hot (n, classes) or integers (n,)."""
    labels = to_indices(t, params["b2"].size)
    spans = _spans(x.shape[0], chunk_size)
    kept = []
    chunks = [_chunk(params, x[a:b], labels[a:b], kept if probabilities else None) for a, b in spans]
    hits = [(np.count_nonzero(p == labels[a:b]), log_p_sum) for (p, log_p_sum), (a, b) in zip(chunks, spans)]
    predictions = np.concatenate([p for p, _ in chunks]) if chunks else np.empty(0, np.intp)
    if not probabilities:
        return (*_combine(hits, labels.shape[0]), predictions)
    outputs = np.concatenate(kept) if kept else np.empty((0, params["b2"].size), params["b2"].dtype)
    return (*_combine(hits, labels.shape[0]), predictions, outputs)


def confusion_matrix(labels, predictions, n_classes):
    """(n_classes, n_classes) counts: rows the true class, columns the predicted one."""
    labels, predictions = np.asarray(labels, np.intp), np.asarray(predictions, np.intp)
    return np.bincount(labels * n_classes + predictions, minlength=n_classes ** 2).reshape(n_classes, n_classes)


def _chunk(params, x, labels, keep=None):
    """(predictions, sum of log(p + 1e-7) of the true classes) of one chunk of rows; its softmax
    outputs are appended to `keep` when one is given."""
    y = predict(params, x)
    if keep is not None:
        keep.append(y)
    log_p = np.log(y[np.arange(x.shape[0]), labels] + 1e-7)  # the 1e-7 of cross_entropy_error
    return np.argmax(y, axis=1), float(np.sum(log_p, dtype=np.float64))


def _combine(chunks, n):
    """(accuracy, mean loss) over n rows from consecutive chunks' (correct, sum of log p)."""
    correct, log_p = 0, 0.0
    for hits, log_p_sum in chunks:
        correct += int(hits)
        log_p -= log_p_sum
    return correct / n, log_p / n


def _spans(n, chunk_size):
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


class BackgroundEvaluator:
    """Per-epoch rows of snapshots, evaluated on a second thread while training goes on.

    submit(epoch, iteration, params) queues one snapshot (params must not change after);
    results() returns its rows in the order submitted, the calling thread taking a share of
    the chunks still queued, and raises the first error of any chunk.

    With validation_rows (int indices into x_train/t_train: the held-out images), each row
    also has validation_accuracy and validation_loss, the train figures cover train_rows
    only (None: every row), and validation_rows() gives every snapshot's validation figures
    as soon as they are ready: their chunks run before any other, and the calling thread
    helps with them. Without it, rows hold exactly EPOCH_COLUMNS.
    """

    def __init__(self, x_train, t_train, x_test, t_test, n_classes, chunk_size=CHUNK_ROWS, *,
                 train_rows=None, validation_rows=None):
        train_labels = to_indices(t_train, n_classes)
        self.splits = [(x_train, train_labels, train_rows), (x_test, to_indices(t_test, n_classes), None)]
        if validation_rows is not None:
            self.splits.append((x_train, train_labels, np.asarray(validation_rows, dtype=np.intp)))
        self.spans = [_spans(x.shape[0] if rows is None else len(rows), chunk_size)
                      for x, _, rows in self.splits]  # the chunks of each split
        self.snapshots = []  # (epoch, iteration, [[chunk result] per split])
        self.jobs = queue.PriorityQueue()  # (priority, sequence, job): validation chunks first, None last
        self.sequence = itertools.count()
        self.pending = 0
        self.error = None
        self.done = threading.Condition()
        self.thread = threading.Thread(target=self._work, name="evaluate", daemon=True)
        self.thread.start()

    def submit(self, epoch, iteration, params):
        results = [[None] * len(spans) for spans in self.spans]
        self.snapshots.append((epoch, iteration, results))
        with self.done:
            self.pending += sum(len(spans) for spans in self.spans)
        for k in sorted(range(len(self.spans)), key=lambda k: k != VALIDATION):
            for i, span in enumerate(self.spans[k]):
                self.jobs.put((0 if k == VALIDATION else 1, next(self.sequence), (params, k, i, span, results)))

    def results(self):
        """[row] for every snapshot submitted, each a dict of EPOCH_COLUMNS (and VALIDATION_COLUMNS)."""
        self._help(lambda priority: True)
        with self.done:
            self.done.wait_for(lambda: self.pending == 0 or self.error is not None)
        if self.error is not None:
            raise self.error
        return [_row(epoch, iteration, results, self.splits) for epoch, iteration, results in self.snapshots]

    def validation_rows(self):
        """[{epoch, iteration, validation_accuracy, validation_loss}] of every snapshot submitted,
        waiting for the figures still being computed; [] without a validation set."""
        if len(self.splits) <= VALIDATION:
            return []
        self._help(lambda priority: priority == 0)

        def ready():
            return all(None not in results[VALIDATION] for _, _, results in self.snapshots)

        with self.done:
            self.done.wait_for(lambda: ready() or self.error is not None)
        if self.error is not None:
            raise self.error
        rows = self.splits[VALIDATION][2]
        return [{"epoch": float(epoch), "iteration": int(iteration),
                 **dict(zip(VALIDATION_COLUMNS, _combine(results[VALIDATION], len(rows))))}
                for epoch, iteration, results in self.snapshots]

    def _help(self, wanted):
        """Run queued jobs on the calling thread while the next one is `wanted` (by its priority)."""
        while True:
            try:
                item = self.jobs.get_nowait()
            except queue.Empty:
                return
            if item[2] is None or not wanted(item[0]):
                self.jobs.put(item)
                return
            self._run(item[2])

    def _work(self):
        while (job := self.jobs.get()[2]) is not None:
            self._run(job)

    def _run(self, job):
        params, k, i, (start, stop), results = job
        x, labels, rows = self.splits[k]
        try:
            if rows is None:
                chunk_x, chunk_labels = x[start:stop], labels[start:stop]
            else:
                chunk_x, chunk_labels = x[rows[start:stop]], labels[rows[start:stop]]
            predictions, log_p_sum = _chunk(params, chunk_x, chunk_labels)
            results[k][i] = (np.count_nonzero(predictions == chunk_labels), log_p_sum)
        except BaseException as error:  # handed to results(), which would otherwise wait forever
            with self.done:
                self.error = self.error or error
                self.done.notify_all()
            return
        with self.done:
            self.pending -= 1
            self.done.notify_all()

    def close(self):
        self.jobs.put((2, next(self.sequence), None))
        self.thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _row(epoch, iteration, results, splits):
    figures = [_combine(chunks, labels.shape[0] if rows is None else len(rows))
               for chunks, (_, labels, rows) in zip(results, splits)]
    (train_accuracy, train_loss), (test_accuracy, test_loss) = figures[:2]
    row = {"epoch": float(epoch), "iteration": int(iteration), "train_accuracy": train_accuracy,
           "test_accuracy": test_accuracy, "train_loss": train_loss, "test_loss": test_loss}
    if len(figures) > VALIDATION:
        row.update(zip(VALIDATION_COLUMNS, figures[VALIDATION]))
    return row

