"""Mini-batch SGD of chapter 4 (numpy only, no I/O).

The caller saves checkpoints: `train` hands it the state at each checkpoint iteration
through a callback, and resumes from a state it is given back. Given the same start
state, the same data and the same machine, every run produces the same bits.
"""

import math
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from pipeline.errors import ParameterError, TrainingError
from pipeline.evaluation import BackgroundEvaluator
from pipeline.functions import to_indices
from pipeline.network import PARAM_NAMES

SAMPLINGS = ("with-replacement", "shuffle")
DTYPES = ("float32", "float64")


def iterations_per_epoch(train_size, batch_size):
    """One epoch is ceil(n / batch) iterations (at least one)."""
    return max(math.ceil(train_size / batch_size), 1)


def checkpoint_iterations(train_size, batch_size, iterations):
    """Iterations after which a checkpoint is taken: 0, every epoch boundary, and the last."""
    per_epoch = iterations_per_epoch(train_size, batch_size)
    return sorted(set(range(0, iterations, per_epoch)) | {iterations})


def validate_hyperparameters(hidden_size, batch_size, learning_rate, iterations, weight_init_std, dtype, sampling,
                             train_size=None):
    """Raise ParameterError naming the first invalid value and what is allowed.

    train_size, when known, also rules out a batch larger than the training set and
    fewer iterations than one epoch (there would be no per-epoch figures to report).
    """
    checks = [
        (isinstance(hidden_size, int) and hidden_size >= 1, "hidden_size", hidden_size, "a whole number >= 1"),
        (isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "a whole number >= 1"),
        (math.isfinite(learning_rate) and learning_rate > 0, "learning_rate", learning_rate, "a number > 0"),
        (isinstance(iterations, int) and iterations >= 1, "iterations", iterations, "a whole number >= 1"),
        (math.isfinite(weight_init_std) and weight_init_std > 0, "weight_init_std", weight_init_std, "a number > 0"),
        (dtype in DTYPES, "dtype", dtype, " or ".join(DTYPES)),
        (sampling in SAMPLINGS, "sampling", sampling, " or ".join(SAMPLINGS)),
    ]
    for ok, name, value, allowed in checks:
        if not ok:
            raise ParameterError(f"invalid {name}={value!r}: must be {allowed}")
    if train_size is None:
        return
    if batch_size > train_size:
        raise ParameterError(f"invalid batch_size={batch_size}: must be at most the {train_size} training images")
    per_epoch = iterations_per_epoch(train_size, batch_size)
    if iterations < per_epoch:
        raise ParameterError(f"invalid iterations={iterations}: must be at least one epoch ({per_epoch} iterations "
                             f"of batch {batch_size} over {train_size} images)")


def train(network, x_train, t_train, *, batch_size, learning_rate, iterations, sampling, rng,
          start_iteration=0, losses=None, on_checkpoint=None):
    """Run SGD on `network` in place from start_iteration up to `iterations`.

    x_train: (n, input_size), any float dtype (converted to the network's row by row);
    t_train: one-hot (n, classes) or integer labels (n,). rng: the numpy Generator that
    draws the mini-batches, in the state it had at start_iteration. losses: the
    mini-batch losses of iterations 1..start_iteration when resuming. Sampling
    "with-replacement" draws each batch independently (the seeds' np.random.choice);
    "shuffle" draws a permutation at each epoch start and walks through it.

    The batches between two checkpoints are drawn together when the first of them
    starts, so the generator's state at a checkpoint is all a resume needs. A second
    thread gathers the rows of upcoming batches while the current ones train.

    on_checkpoint(iteration, losses) is called at 0 (when starting fresh), at every
    epoch boundary and at the end, after the update, with the network and rng in the
    state that a resume from that point needs (and is the place to report progress).
    Returns the losses, float64 (iterations,): the
    mean cross-entropy of each mini-batch before its update.

    Raises TrainingError when the loss or a parameter stops being finite.
    """
    train_size = x_train.shape[0]
    per_epoch = iterations_per_epoch(train_size, batch_size)
    checkpoints = checkpoint_iterations(train_size, batch_size, iterations)
    labels = to_indices(t_train, network.sizes[2])

    history = np.full(iterations, np.nan)
    if start_iteration:
        history[:start_iteration] = losses[:start_iteration]
    elif on_checkpoint is not None:
        on_checkpoint(0, history[:0])

    if sampling == "shuffle" and start_iteration % per_epoch and start_iteration < iterations:
        # the permutation of a half-walked epoch is not part of the saved state
        raise ValueError(f"shuffle sampling resumes only at an epoch boundary, not at {start_iteration}")

    with _RowGatherer(x_train, network.dtype) as gatherer:
        for first, stop in zip(checkpoints, checkpoints[1:]):
            if stop <= start_iteration:
                continue
            batches = _draw_batches(rng, sampling, train_size, batch_size, per_epoch, first, stop)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # checked just below
                history[first:stop] = _sgd_steps(network, batches, labels, learning_rate, gatherer)
            _require_finite_losses(history, first, stop, learning_rate)
            _require_finite(network.params, stop, learning_rate)
            if on_checkpoint is not None:
                on_checkpoint(stop, history[:stop])
    return history


def train_evaluating(network, x_train, t_train, x_test, t_test, *, on_checkpoint=None, on_row=None, **sgd):
    """train(), with the weights of every checkpoint evaluated on a second thread while training
    goes on (evaluation.BackgroundEvaluator). `sgd`: train()'s keyword arguments.

    on_checkpoint(iteration, losses) as in train(), called before that checkpoint's weights
    are queued; on_row(row, params_digest) on the evaluating thread for each finished row.
    Returns (losses, rows): rows of the checkpoints passed in this call, in order. Raises
    the first error of training or of an evaluation.
    """
    per_epoch = iterations_per_epoch(x_train.shape[0], sgd["batch_size"])
    with BackgroundEvaluator(x_train, t_train, x_test, t_test, on_row=on_row) as evaluator:
        def checkpoint(iteration, losses):
            if on_checkpoint is not None:
                on_checkpoint(iteration, losses)
            evaluator.submit(iteration / per_epoch, iteration, network.params)

        losses = train(network, x_train, t_train, on_checkpoint=checkpoint, **sgd)
        return losses, [row for row, _ in evaluator.results()]


def _draw_batches(rng, sampling, train_size, batch_size, per_epoch, first, stop):
    """The row indices of iterations first..stop-1, one array per iteration, drawn from rng now.

    first is a checkpoint, so with shuffling it starts an epoch (or resumes at one)."""
    steps = stop - first
    if sampling == "shuffle":
        batches = []
        for start in range(first, stop, per_epoch):
            permutation = rng.permutation(train_size)
            walked = min(per_epoch, stop - start)
            batches += [permutation[k * batch_size:(k + 1) * batch_size] for k in range(walked)]
        return batches
    return list(rng.integers(0, train_size, size=(steps, batch_size)))


CHUNK_ROWS = 4096  # rows gathered at a time by the second thread: a few MB, cache-sized
FIRST_CHUNK_STEPS = 8  # batches in the first chunk of a checkpoint segment, gathered by the steps' own thread


def _sgd_steps(network, batches, labels, learning_rate, gatherer):
    """One SGD step per batch of row indices; returns the mini-batch losses (float64) before each update.

    The gatherer copies out the rows of each chunk of batches on its thread, one chunk
    ahead of the steps. The probability of each true class is kept and the losses
    computed once per chunk: -mean(log(p + 1e-7)) per batch, as cross_entropy_error would."""
    theta = network.theta
    losses = np.empty(len(batches))
    chunks = _chunks(batches)
    pending = gatherer.submit(chunks[0][1], here=True) if chunks else None
    for n, (first, indices) in enumerate(chunks):
        rows = pending.result()
        if n + 1 < len(chunks):
            pending = gatherer.submit(chunks[n + 1][1])
        steps, size = indices.shape
        backprop = network.backprop(size)
        step, grad = backprop.run, backprop.flat_grad
        targets = backprop.targets(labels[indices])
        p = np.empty(indices.shape, dtype=network.dtype)
        for j in range(steps):
            step(rows[j * size:(j + 1) * size], targets[j], p[j], learning_rate)
            np.subtract(theta, grad, out=theta)
        np.log(p + 1e-7, out=p)
        losses[first:first + steps] = -p.sum(axis=1, dtype=np.float64) / size
    return losses


def _chunks(batches):
    """[(index of the first batch, (steps, size) row indices)]: runs of consecutive batches of
    one size, each at most CHUNK_ROWS rows (or a single batch).

    A segment's first chunk is FIRST_CHUNK_STEPS batches, which the steps' own thread
    gathers (they would wait for it anyway, and the other thread may take milliseconds to
    be scheduled while the evaluation keeps the second core busy); each next chunk is at
    most twice the one before, so it is gathered well within the steps of that one."""
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
    """A second thread that copies the rows of the next chunk of batches out of x_train.

    Gathering 100 random rows is bound by memory latency, as long as a matrix product
    of the step itself; on another core it overlaps with the steps. Two buffers
    alternate: a chunk's rows stay untouched until the chunk after next is gathered."""

    def __init__(self, x_train, dtype):
        self.x_train = x_train
        self.buffers = [np.empty((0, x_train.shape[1]), dtype=dtype) for _ in range(2)]
        self.turn = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gather-rows")

    def submit(self, indices, here=False):
        """A future of the rows of x_train at `indices` (any shape, read in order), in the training dtype.

        here=True gathers them on the calling thread, done when this returns: for a chunk
        the caller would wait for anyway, it saves waking the other thread."""
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
            np.take(self.x_train, indices, axis=0, out=out, mode="clip")  # valid indices: clip skips a buffered copy
        else:
            np.copyto(out, self.x_train[indices])
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)


def _require_finite_losses(history, first, stop, learning_rate):
    bad = np.flatnonzero(~np.isfinite(history[first:stop]))
    if bad.size:
        i = first + int(bad[0])
        raise TrainingError(
            f"the loss became {history[i]} at iteration {i + 1}: training diverged; "
            f"try a smaller learning_rate than {learning_rate}"
        )


def _require_finite(params, iteration, learning_rate):
    for key in PARAM_NAMES:
        if not np.all(np.isfinite(params[key])):
            raise TrainingError(
                f"{key} holds NaN or infinite values at iteration {iteration}: training diverged; "
                f"try a smaller learning_rate than {learning_rate}"
            )
