"""Mini-batch SGD of chapter 4 (numpy only, no I/O).

The caller saves checkpoints: `train` hands it the state at each checkpoint iteration
through a callback, and resumes from a state it is given back. Given the same start
state, the same data and the same machine, every run produces the same bits.
"""

import math

import numpy as np

from pipeline.errors import ParameterError, TrainingError
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

    x_train: (n, input_size) in the network's dtype; t_train: one-hot (n, classes) or
    integer labels (n,) (faster to gather, the same loss). rng: the numpy Generator that draws the mini-batches, in the
    state it had at start_iteration. losses: the mini-batch losses of iterations
    1..start_iteration when resuming. Sampling "with-replacement" draws each batch
    independently (the seeds' np.random.choice); "shuffle" draws a permutation at each
    epoch start and walks through it.

    on_checkpoint(iteration, losses) is called at 0 (when starting fresh), at every
    epoch boundary and at the end, after the update, with the network and rng in the
    state that a resume from that point needs (and is the place to report progress).
    Returns the losses, float64 (iterations,): the
    mean cross-entropy of each mini-batch before its update.

    Raises TrainingError when the loss or a parameter stops being finite.
    """
    params = network.params
    train_size = x_train.shape[0]
    per_epoch = iterations_per_epoch(train_size, batch_size)
    checkpoints = set(checkpoint_iterations(train_size, batch_size, iterations))

    history = np.full(iterations, np.nan)
    if start_iteration:
        history[:start_iteration] = losses[:start_iteration]
    elif on_checkpoint is not None:
        on_checkpoint(0, history[:0])

    if sampling == "shuffle" and start_iteration % per_epoch and start_iteration < iterations:
        # the permutation of a half-walked epoch is not part of the saved state
        raise ValueError(f"shuffle sampling resumes only at an epoch boundary, not at {start_iteration}")

    gather = _batch_gatherer(x_train, t_train, batch_size, network.dtype)
    permutation = None
    for i in range(start_iteration, iterations):
        if sampling == "shuffle":
            step = i % per_epoch
            if step == 0:
                permutation = rng.permutation(train_size)
            batch_mask = permutation[step * batch_size:(step + 1) * batch_size]
        else:
            batch_mask = rng.integers(0, train_size, size=batch_size)
        x_batch, t_batch = gather(batch_mask)

        loss, steps = network.loss_and_gradient(x_batch, t_batch, scale=learning_rate)
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss} at iteration {i + 1}: training diverged; "
                f"try a smaller learning_rate than {learning_rate}"
            )
        for key in PARAM_NAMES:
            params[key] -= steps[key]  # learning_rate * gradient
        history[i] = loss

        if i + 1 in checkpoints and on_checkpoint is not None:
            _require_finite(params, i + 1, learning_rate)
            on_checkpoint(i + 1, history[:i + 1])
    return history


def _batch_gatherer(x_train, t_train, batch_size, dtype):
    """A function batch_mask -> (x_batch, t_batch) that fills the same arrays every step.

    Reused arrays: a fresh (batch, 784) array each step costs page faults, and gathering
    rows straight into place (np.take with out=) saves a copy.
    """
    x_full = np.empty((batch_size,) + x_train.shape[1:], dtype=dtype)
    t_full = np.empty((batch_size,) + t_train.shape[1:], dtype=t_train.dtype)

    def gather(batch_mask):
        n = batch_mask.size  # the last batch of a shuffled epoch may be short
        x_batch, t_batch = x_full[:n], t_full[:n]
        np.take(x_train, batch_mask, axis=0, out=x_batch)
        np.take(t_train, batch_mask, axis=0, out=t_batch)
        return x_batch, t_batch

    return gather


def _require_finite(params, iteration, learning_rate):
    for key in PARAM_NAMES:
        if not np.all(np.isfinite(params[key])):
            raise TrainingError(
                f"{key} holds NaN or infinite values at iteration {iteration}: training diverged; "
                f"try a smaller learning_rate than {learning_rate}"
            )
