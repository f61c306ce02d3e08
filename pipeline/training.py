"""Mini-batch SGD of chapter 4 (numpy only).

train() runs the loop; FastSGD is its one fast step. The caller saves checkpoints from a
callback and resumes from a state it is given back: same start state, same data, same
machine, same bits. validation_split() holds training images out for model selection;
EarlyStopping decides from their accuracy when to stop.
"""

import hashlib
import math
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from pipeline.errors import TrainingError
from pipeline.functions import to_indices
from pipeline.network import PARAM_NAMES

SAMPLINGS = ("with-replacement", "shuffle")
DTYPES = ("float32", "float64")
MAX_WEIGHT = 1e6  # a weight past this means training has diverged, even if it is still finite
LOSS_GROWTH = 2.0  # an epoch's mean loss this many times the first batch's loss: diverged


def validation_split(labels, size, seed):
    """The held-out validation images: sorted int64 indices (size,) into labels (n,) integers.

    Stratified: class c gets floor(size * n_c / n) images, and the rest of size goes one each
    to the classes with the largest remainders (ties: the lower class). Within each class the
    images are drawn by numpy.random.default_rng(seed), classes in ascending order, so the
    same labels, size and seed always give the same indices. ValueError unless
    0 <= size < n and labels are non-negative integers."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ValueError(f"labels must be a 1-d array of integers, not {labels.dtype} of shape {labels.shape}")
    n = labels.shape[0]
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 <= size < n:
        raise ValueError(f"invalid validation size {size!r}: must be a whole number from 0 to {n - 1} "
                         f"(the {n} training images)")
    if n and labels.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    counts = np.bincount(labels) if n else np.zeros(0, np.int64)
    shares = [int(size) * int(c) for c in counts]  # exact integers: no rounding differs between machines
    taken = [share // n for share in shares]
    by_remainder = sorted(range(len(counts)), key=lambda c: (-(shares[c] % n), c))
    for c in by_remainder[:int(size) - sum(taken)]:
        taken[c] += 1
    rng = np.random.default_rng(seed)
    held_out = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in enumerate(taken)]
    return np.sort(np.concatenate(held_out + [np.empty(0, np.int64)]).astype(np.int64))


def split_digest(indices):
    """sha256 hex of the indices as little-endian int64: names a held-out set exactly."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def training_rows(n, held_out):
    """The sorted int64 indices of 0..n-1 not in held_out: the images training draws from."""
    keep = np.ones(n, dtype=bool)
    keep[np.asarray(held_out, dtype=np.int64)] = False
    return np.flatnonzero(keep).astype(np.int64)


def best_epoch(rows):
    """The row of the best validation accuracy among evaluation rows (the earliest of equal
    ones), by EarlyStopping's rule; None when no row has a validation figure."""
    tracker = EarlyStopping(0)
    tracker.observe([row for row in rows if row.get("validation_accuracy") is not None])
    return tracker.best


class EarlyStopping:
    """The best validation accuracy so far and when to stop: after `patience` checkpoints in a
    row without a strictly higher one (0: never). The earliest of equal bests is the best.

    observe(rows) takes every row seen so far (dicts with epoch, iteration,
    validation_accuracy; oldest first, as the evaluation gives them) and reads only the new
    ones, so the same rows always lead to the same decision, also when a resumed run
    recomputes them. Rows after the stop are ignored.
    """

    def __init__(self, patience):
        self.patience = patience
        self.seen = 0
        self.best = None  # the row of the best validation accuracy
        self.since_best = 0
        self.stopped_at = None  # the row at which training stops

    def observe(self, rows):
        """Take the rows not yet seen; True once training should stop."""
        for row in rows[self.seen:]:
            self.seen += 1
            if self.stopped_at is not None:
                continue
            if self.best is None or row["validation_accuracy"] > self.best["validation_accuracy"]:
                self.best, self.since_best = row, 0
            else:
                self.since_best += 1
                if self.patience and self.since_best >= self.patience:
                    self.stopped_at = row
        return self.stopped_at is not None

    @property
    def stopped(self):
        return self.stopped_at is not None

    def reason(self):
        """One sentence: where training stopped and why (or that it did not stop early)."""
        if self.best is None:
            return "no validation figures yet"
        best = (f"its best, {self.best['validation_accuracy']:.4f}, was at epoch {self.best['epoch']:.4g} "
                f"(iteration {self.best['iteration']})")
        if not self.stopped:
            return f"validation accuracy: {best}"
        stop = self.stopped_at
        return (f"stopped early at epoch {stop['epoch']:.4g} (iteration {stop['iteration']}): validation accuracy "
                f"has not improved for {self.patience} epochs; {best}")


def iterations_per_epoch(train_size, batch_size):
    """One epoch is ceil(n / batch) iterations (at least one)."""
    return max(math.ceil(train_size / batch_size), 1)


def checkpoint_iterations(train_size, batch_size, iterations):
    """Iterations after which a checkpoint is taken: 0, every epoch boundary, and the last."""
    per_epoch = iterations_per_epoch(train_size, batch_size)
    return sorted(set(range(0, iterations, per_epoch)) | {iterations})


class FastSGD:
    """SGD steps of a TwoLayerNet: what TwoLayerNet.gradient computes (equal to rounding),
    applied as params -= learning_rate * grads.

    The parameters live packed in one flat array while training (W1, b1, W2, b2, so that
    [W2; b2] is one (hidden + 1, output) block and b2 rides in the matrix products), and
    every intermediate in buffers made once per batch size. params() returns copies.
    """

    def __init__(self, params):
        W1 = np.asarray(params["W1"])
        self.sizes = W1.shape + np.shape(params["b2"])
        self.dtype = W1.dtype
        self.theta = np.empty(_n_params(*self.sizes), dtype=self.dtype)
        self.grad = np.empty_like(self.theta)
        self.views, self.grads = _views(self.theta, *self.sizes), _views(self.grad, *self.sizes)
        for key in PARAM_NAMES:
            self.views[key][...] = params[key]
        self._buffers = {}

    def params(self):
        """The current parameters, as new arrays keyed W1, b1, W2, b2."""
        return {key: view.copy() for key, view in self.views.items()}

    def positions(self, labels):
        """Where each batch's true classes sit in the flattened (classes, batch) output:
        label * batch + row. labels: (batch,) or (steps, batch) integers."""
        labels = np.asarray(labels)
        return labels.astype(np.intp) * labels.shape[-1] + np.arange(labels.shape[-1])

    def step(self, x, positions, p, learning_rate):
        """One update from the batch x (batch, input_size), C-contiguous in self.dtype, whose
        true classes are at `positions`; p (batch,) receives each true class's probability
        before the update (the loss is -mean(log(p + 1e-7)))."""
        batch = x.shape[0]
        if batch not in self._buffers:
            self._buffers[batch] = self._make_buffers(batch)
        a1, dz1, work, z1_ones, y, column = self._buffers[batch]
        W1, b1, W2 = self.views["W1"], self.views["b1"], self.views["W2"]
        W2b2 = _second_layer(self.theta, self.sizes)
        z1 = z1_ones[:, :-1]
        y_flat = y.reshape(-1)
        with np.errstate(over="ignore"):  # exp(-a1) overflows to inf for a1 << 0: sigmoid 0, exact
            # forward: z1 = sigmoid(x W1 + b1), y = softmax([z1 1] [W2; b2]), transposed (classes, batch)
            np.dot(x, W1, out=a1)
            np.add(a1, b1, out=a1)
            np.negative(a1, out=work)
            np.exp(work, out=work)
            np.add(work, 1, out=work)
            np.divide(1, work, out=z1)
            np.dot(W2b2.T, z1_ones.T, out=y)
            np.maximum.reduce(y, axis=0, out=column)
            np.subtract(y, column, out=y)
            np.exp(y, out=y)
            np.add.reduce(y, axis=0, out=column)
            np.divide(y, column, out=y)
            np.take(y_flat, positions, out=p)
            # backward, scaled by the learning rate: dy = (y - t) p / (p + 1e-7) / batch
            y_flat[positions] -= 1
            np.add(p, 1e-7, out=column)
            np.divide(p, column, out=column)
            np.multiply(column, learning_rate / batch, out=column)
            np.multiply(y, column, out=y)
            np.dot(z1_ones.T, y.T, out=_second_layer(self.grad, self.sizes))  # dW2 and, from the ones, db2
            np.dot(y.T, W2.T, out=dz1)
            np.multiply(z1, z1, out=work)  # sigmoid' = z1 - z1^2
            np.subtract(z1, work, out=work)
            np.multiply(dz1, work, out=dz1)
            np.dot(x.T, dz1, out=self.grads["W1"])
            np.add.reduce(dz1, axis=0, out=self.grads["b1"])
            np.subtract(self.theta, self.grad, out=self.theta)

    def _make_buffers(self, batch):
        _, hidden, output = self.sizes
        a1, dz1, work = (np.empty((batch, hidden), dtype=self.dtype) for _ in range(3))
        z1_ones = np.ones((batch, hidden + 1), dtype=self.dtype)  # [z1 1]
        return a1, dz1, work, z1_ones, np.empty((output, batch), dtype=self.dtype), np.empty(batch, self.dtype)


def train(network, x_train, t_train, *, batch_size, learning_rate, iterations, sampling, rng,
          start_iteration=0, losses=None, on_checkpoint=None, train_rows=None, should_stop=None):
    """SGD on network.params from start_iteration up to `iterations`.

    x_train (n, input_size), any float dtype; t_train one-hot (n, classes) or integers (n,).
    train_rows: the int indices of the rows training draws from (None: all n), e.g.
    training_rows() of a validation split; an epoch is then ceil(len(train_rows) / batch)
    iterations, and batches are drawn as positions into train_rows, so None and
    arange(n) give the same bits. rng: the Generator drawing the batches, in its state at
    start_iteration; losses: the mini-batch losses of iterations 1..start_iteration when
    resuming. "with-replacement" draws each batch independently; "shuffle" walks a new
    permutation each epoch. on_checkpoint(iteration, losses) is called at 0 (fresh start),
    each epoch boundary and the end, with network.params (new arrays) and rng as a resume
    from there needs them. should_stop(iteration), if given, is asked after each checkpoint
    and at the iteration a resume starts from; True ends training there.
    Returns the float64 mini-batch losses of the iterations run (each before its update):
    (iterations,), or fewer when should_stop ended it; raises TrainingError when training diverges.
    """
    train_size = x_train.shape[0] if train_rows is None else len(train_rows)
    per_epoch = iterations_per_epoch(train_size, batch_size)
    checkpoints = checkpoint_iterations(train_size, batch_size, iterations)
    labels = to_indices(t_train, network.sizes[2])
    if sampling == "shuffle" and start_iteration % per_epoch and start_iteration < iterations:
        raise ValueError(f"shuffle sampling resumes only at an epoch boundary, not at {start_iteration}")

    history = np.full(iterations, np.nan)
    if start_iteration:
        history[:start_iteration] = losses[:start_iteration]
    elif on_checkpoint is not None:
        on_checkpoint(0, history[:0])
    if should_stop is not None and should_stop(start_iteration):
        return history[:start_iteration]
    sgd = FastSGD(network.params)
    with _RowGatherer(x_train, sgd.dtype) as gatherer:
        for first, stop in zip(checkpoints, checkpoints[1:]):
            if stop <= start_iteration:
                continue
            batches = _draw_batches(rng, sampling, train_size, batch_size, per_epoch, first, stop)
            if train_rows is not None:
                batches = [train_rows[batch] for batch in batches]
            with np.errstate(invalid="ignore", divide="ignore"):  # checked just below
                history[first:stop] = _steps(sgd, batches, labels, learning_rate, gatherer)
            network.params = sgd.params()
            _require_convergence(history, first, stop, per_epoch, network.params, learning_rate)
            if on_checkpoint is not None:
                on_checkpoint(stop, history[:stop])
            if should_stop is not None and should_stop(stop):
                return history[:stop]
    return history


def _draw_batches(rng, sampling, train_size, batch_size, per_epoch, first, stop):
    """Row indices of iterations first..stop-1, one array each, drawn from rng now (first
    is a checkpoint, so with shuffling it starts an epoch)."""
    if sampling == "shuffle":
        batches = []
        for start in range(first, stop, per_epoch):
            permutation = rng.permutation(train_size)
            walked = min(per_epoch, stop - start)
            batches += [permutation[k * batch_size:(k + 1) * batch_size] for k in range(walked)]
        return batches
    return list(rng.integers(0, train_size, size=(stop - first, batch_size)))


CHUNK_ROWS = 4096  # rows gathered at a time: a few MB, cache-sized
FIRST_CHUNK_STEPS = 8  # batches of a segment's first chunk, gathered by the training thread itself


def _steps(sgd, batches, labels, learning_rate, gatherer):
    """One SGD step per batch of row indices; the mini-batch losses (float64) before each update.
    The gatherer copies out each next chunk's rows on its thread while this one trains."""
    losses = np.empty(len(batches))
    chunks = _chunks(batches)
    pending = gatherer.submit(chunks[0][1], here=True) if chunks else None
    for n, (first, indices) in enumerate(chunks):
        rows = pending.result()
        if n + 1 < len(chunks):
            pending = gatherer.submit(chunks[n + 1][1])
        steps, size = indices.shape
        positions = sgd.positions(labels[indices])
        p = np.empty(indices.shape, dtype=sgd.dtype)
        for j in range(steps):
            sgd.step(rows[j * size:(j + 1) * size], positions[j], p[j], learning_rate)
        np.log(p + 1e-7, out=p)
        losses[first:first + steps] = -p.sum(axis=1, dtype=np.float64) / size
    return losses


def _chunks(batches):
    """[(index of the first batch, (steps, size) row indices)]: runs of batches of one size,
    at most CHUNK_ROWS rows, the first FIRST_CHUNK_STEPS batches and each next at most twice
    the one before (so it is gathered well within the steps of that one)."""
    chunks, first, limit = [], 0, FIRST_CHUNK_STEPS
    while first < len(batches):
        size, stop = batches[first].size, first + 1
        while (stop < len(batches) and batches[stop].size == size and stop - first < limit
               and (stop + 1 - first) * size <= CHUNK_ROWS):
            stop += 1
        chunks.append((first, np.stack(batches[first:stop])))
        limit = 2 * (stop - first)
        first = stop
    return chunks


class _RowGatherer:
    """A second thread copying the rows of the next chunk of batches out of x_train, in the
    training dtype, into one of two alternating buffers."""

    def __init__(self, x_train, dtype):
        self.x_train = x_train
        self.buffers = [np.empty((0, x_train.shape[1]), dtype=dtype) for _ in range(2)]
        self.turn = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gather-rows")

    def submit(self, indices, here=False):
        """A future of x_train's rows at indices (read in order); here=True gathers them now."""
        indices = indices.reshape(-1)
        buffer = self.buffers[self.turn]
        if buffer.shape[0] < indices.size:
            buffer = self.buffers[self.turn] = np.empty((indices.size,) + buffer.shape[1:], dtype=buffer.dtype)
        self.turn ^= 1
        if here:
            done = Future()
            done.set_result(self._gather(indices, buffer[:indices.size]))
            return done
        return self.pool.submit(self._gather, indices, buffer[:indices.size])

    def _gather(self, indices, out):
        if self.x_train.dtype == out.dtype:
            np.take(self.x_train, indices, axis=0, out=out, mode="clip")  # indices are valid: clip skips a copy
        else:
            np.copyto(out, self.x_train[indices])
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)


def _require_convergence(history, first, stop, per_epoch, params, learning_rate):
    """TrainingError when a loss is not finite, a weight is past MAX_WEIGHT, or the last epoch's
    mean loss is LOSS_GROWTH times the first batch's."""
    hint = f"training diverged; try a smaller learning_rate than {learning_rate}"
    bad = np.flatnonzero(~np.isfinite(history[first:stop]))
    if bad.size:
        i = first + int(bad[0])
        raise TrainingError(f"the loss became {history[i]} at iteration {i + 1}: {hint}")
    for key in PARAM_NAMES:
        largest = float(np.max(np.abs(params[key]))) if params[key].size else 0.0
        if not largest <= MAX_WEIGHT:  # also catches NaN
            raise TrainingError(f"{key} reached {largest:.3g} (beyond {MAX_WEIGHT:g}) at iteration {stop}: {hint}")
    recent = float(np.mean(history[max(stop - per_epoch, 0):stop]))
    if stop >= per_epoch and recent > LOSS_GROWTH * history[0]:
        raise TrainingError(f"the mean loss of the epoch ending at iteration {stop} is {recent:.4g}, "
                            f"{recent / history[0]:.3g} times the first batch's {history[0]:.4g}: {hint}")


def _n_params(input_size, hidden_size, output_size):
    return (input_size + 1) * hidden_size + (hidden_size + 1) * output_size


def _second_layer(flat, sizes):
    """[W2; b2] of a flat array laid out W1, b1, W2, b2: one (hidden + 1, output) matrix."""
    _, hidden_size, output_size = sizes
    return flat[-(hidden_size + 1) * output_size:].reshape(hidden_size + 1, output_size)


def _views(flat, input_size, hidden_size, output_size):
    """W1, b1, W2, b2 as views of a flat array laid out in that order."""
    shapes = {"W1": (input_size, hidden_size), "b1": (hidden_size,),
              "W2": (hidden_size, output_size), "b2": (output_size,)}
    views, start = {}, 0
    for key in PARAM_NAMES:
        size = math.prod(shapes[key])
        views[key] = flat[start:start + size].reshape(shapes[key])
        start += size
    return views
