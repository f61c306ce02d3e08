"""HDF5 checkpoints of a training run, readable with nothing but h5py (or `h5ls -r`).

Layout of one file:
    /params/W1, /params/b1, /params/W2, /params/b2   the weights, float32 or float64
    /losses          float64 (iteration,): the mini-batch loss of every iteration so far
    /evaluation      model.h5 only: float64 (checkpoints, 6 or 8), one row per checkpoint, columns
                     in its `columns` attribute (epoch, iteration, train/test accuracy and loss,
                     then validation accuracy and loss when the run holds out a validation split)
    attributes: iteration, epoch, minibatch_loss (the last batch's), epoch_mean_loss (mean over
                the last epoch's batches; both absent at iteration 0), dataset, data_checksums,
                inputs (sha256 of the files it was trained from), hyperparameters, rng_state
                (numpy's bit_generator.state), all JSON; run_id, format_version, created_at
                (ISO 8601, UTC), package_version; with a validation split also
                validation_size, split_seed, validation_split_sha256 (split_digest of the held-out
                indices) and, in model.h5, best_iteration, best_epoch, best_validation_accuracy
                (the checkpoint of the best validation accuracy: best.h5 beside model.h5 is a copy
                of it) and stopped_early (bool), stop_reason

Every file appears complete or not at all (written beside, flushed, renamed).
"""

import datetime
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__
from pipeline.atomic import atomic_path
from pipeline.errors import CheckpointError
from pipeline.evaluation import EPOCH_COLUMNS, VALIDATION_COLUMNS, epoch_columns
from pipeline.logs import logger
from pipeline.network import PARAM_NAMES

FORMAT_VERSION = 2
MAX_VALUES = 200_000_000  # weights and losses together: refused before reading, not after running out of memory
MAX_SIDE = 1 << 20  # no side of a weight matrix is longer (inputs, hidden units, classes)
NAME = re.compile(r"^iter-(\d{8,})\.h5$")  # 8 digits, more past iteration 99,999,999
REQUIRED_ATTRS = ("iteration", "epoch", "rng_state", "hyperparameters", "run_id", "format_version")
ABSENT = "never saved"  # what trusted() says of a checkpoint with neither a file nor a record
FIX = "rerun the training command: it is made again from the last good checkpoint before it"


@dataclass
class Checkpoint:
    path: Path
    params: dict
    iteration: int
    epoch: float
    losses: np.ndarray
    rng_state: dict
    hyperparameters: dict
    dataset: str
    data_checksums: dict
    run_id: str
    inputs: dict = field(default_factory=dict)
    evaluation: list = None
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    package_version: str = __version__
    attrs: dict = field(default_factory=dict, repr=False)


def checkpoint_path(checkpoint_dir, iteration):
    """checkpoints/iter-00000600.h5: names sort in iteration order."""
    return Path(checkpoint_dir) / f"iter-{iteration:08d}.h5"


def save_checkpoint(path, *, params, iteration, epoch, losses, rng_state, hyperparameters, dataset,
                    data_checksums, run_id, inputs, per_epoch=1, evaluation=None, attrs=None):
    """Write one checkpoint (or, with evaluation rows, a model file) atomically.

    params: W1 (input, hidden), b1 (hidden,), W2 (hidden, classes), b2 (classes,), in their own
    dtype; losses: (iteration,) mini-batch losses; rng_state: bit_generator.state; inputs:
    {label: sha256}; evaluation: rows of EPOCH_COLUMNS (and VALIDATION_COLUMNS); attrs: more
    attributes (numbers, strings, bools), e.g. the validation split's. Refuses (CheckpointError), before
    writing anything, non-finite weights and a loss history whose length is not iteration.
    """
    for key in PARAM_NAMES:
        if key not in params:
            raise CheckpointError(f"refusing to save {path}: params lack {key}")
        if not np.all(np.isfinite(params[key])):
            raise CheckpointError(f"refusing to save {path}: {key} holds NaN or infinite values")
    losses = np.asarray(losses, dtype=np.float64)
    if losses.shape != (iteration,):
        # resuming continues this history, so a wrong length would corrupt every later report
        raise CheckpointError(f"refusing to save {path}: {losses.shape[0] if losses.ndim else 0} losses "
                              f"for iteration {iteration}")
    figures = {}
    if iteration:  # iteration 0 has no loss yet
        figures = {"minibatch_loss": float(losses[-1]), "epoch_mean_loss": float(np.mean(losses[-per_epoch:]))}
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as f:
        _write_layout(f, params, losses, evaluation, {
            "iteration": int(iteration),
            "epoch": float(epoch),
            **figures,
            "dataset": dataset,
            "data_checksums": _json(data_checksums),
            "hyperparameters": _json(hyperparameters),
            "rng_state": _json(rng_state),
            "run_id": run_id,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "package_version": __version__,
            "inputs": _json(inputs),
            **(attrs or {}),
        })


def _write_layout(f, params, losses, evaluation, attrs):
    group = f.create_group("params")
    for key in PARAM_NAMES:
        group.create_dataset(key, data=params[key])
    f.create_dataset("losses", data=losses)
    if evaluation is not None:
        columns = epoch_columns(evaluation)
        table = f.create_dataset("evaluation", data=np.array(
            [[row[c] for c in columns] for row in evaluation], dtype=np.float64).reshape(-1, len(columns)))
        table.attrs["columns"] = ",".join(columns)
    f.attrs.update(attrs)


def load_checkpoint(path):
    """The Checkpoint in `path`; CheckpointError naming the file, what is wrong (missing,
    not HDF5, truncated, part of the layout missing or inconsistent, a newer format) and
    what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with h5py.File(path, "r") as f:
            _check_layout(path, f)
            attrs = {key: _plain(value) for key, value in f.attrs.items()}
            params = {key: f["params"][key][()] for key in PARAM_NAMES}
            losses = f["losses"][()]
            evaluation = _evaluation(f)
        loaded = Checkpoint(
            path=path, params=params, iteration=int(attrs["iteration"]), epoch=float(attrs["epoch"]), losses=losses,
            rng_state=json.loads(attrs["rng_state"]), hyperparameters=json.loads(attrs["hyperparameters"]),
            dataset=attrs.get("dataset", ""), data_checksums=json.loads(attrs.get("data_checksums", "{}")),
            run_id=attrs["run_id"], created_at=attrs.get("created_at", ""),
            format_version=int(attrs["format_version"]), package_version=attrs.get("package_version", ""),
            inputs=json.loads(attrs.get("inputs", "{}")), evaluation=evaluation, attrs=attrs,
        )
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} is not a readable HDF5 checkpoint ({error}): {FIX}") from None
    _check_consistent(loaded)
    return loaded


def _evaluation(f):
    """model.h5's rows as dicts, or None for a plain checkpoint."""
    if "evaluation" not in f:
        return None
    table = f["evaluation"]
    columns = next((c for c in (EPOCH_COLUMNS, EPOCH_COLUMNS + VALIDATION_COLUMNS)
                    if _plain(table.attrs.get("columns")) == ",".join(c)), None)
    if columns is None or table.ndim != 2 or table.shape[1] != len(columns):
        raise ValueError("its evaluation table does not have the expected columns")
    return [{c: int(v) if c == "iteration" else float(v) for c, v in zip(columns, row)} for row in table[()]]


def _check_layout(path, f):
    """Refuse, before any data is read, a file that is not laid out as ours: a newer format,
    missing parts, too many values, weights that are not float arrays whose shapes chain
    (W1 (input, hidden), b1 (hidden,), W2 (hidden, classes), b2 (classes,)) with sides up to
    MAX_SIDE, and data kept outside the file (external storage, soft or external links)."""
    version = f.attrs.get("format_version")
    if version is not None and int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {int(version)}, newer than this package reads "
                              f"({FORMAT_VERSION}): upgrade mnist-pipeline, or {FIX}")
    names = [f"params/{k}" for k in PARAM_NAMES] + ["losses"] + (["evaluation"] if "evaluation" in f else [])
    _check_links(path, f, names)
    missing = [name for name in names if not isinstance(f.get(name), h5py.Dataset)]
    sizes = [f[name].size for name in names if name not in missing]
    if sum(sizes) > MAX_VALUES:
        raise CheckpointError(f"{path} holds {sum(sizes):,} values, more than a checkpoint of this pipeline "
                              f"can ({MAX_VALUES:,}): not one of its checkpoints; {FIX}")
    missing += [name for name in REQUIRED_ATTRS if name not in f.attrs]
    if missing:
        raise CheckpointError(f"{path} is not a complete checkpoint (missing {', '.join(missing)}): {FIX}")
    for name in names:
        dataset = f[name]
        if dataset.external or dataset.is_virtual:
            raise CheckpointError(f"{path}: {name} keeps its data outside the file (HDF5 external or virtual "
                                  f"storage); refused: not one of this pipeline's checkpoints; {FIX}")
        if dataset.dtype.kind != "f" or dataset.dtype.itemsize not in (4, 8):
            raise CheckpointError(f"{path}: {name} holds {dataset.dtype} values, not float32 or float64: not one of "
                                  f"this pipeline's checkpoints; {FIX}")
    shapes = {k: f["params"][k].shape for k in PARAM_NAMES}
    W1, b1, W2, b2 = (shapes[k] for k in PARAM_NAMES)
    if not (len(W1) == 2 and len(W2) == 2 and b1 == (W1[1],) == (W2[0],) and b2 == (W2[1],)):
        raise CheckpointError(f"{path} is inconsistent (shapes W1 {W1}, b1 {b1}, W2 {W2}, b2 {b2} do not fit "
                              f"together): {FIX}")
    if max(W1 + W2) > MAX_SIDE:
        raise CheckpointError(f"{path}: weights of shapes W1 {W1}, W2 {W2}, sides past {MAX_SIDE:,}: not one of "
                              f"this pipeline's checkpoints; {FIX}")


def _check_links(path, f, names):
    """CheckpointError for any group or dataset on the way to `names` that is a soft or
    external link (an external one would open another file)."""
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts) + 1):
            here = "/".join(parts[:depth])
            link = f.get(here, getlink=True)
            if link is None:
                break
            if not isinstance(link, h5py.HardLink):
                kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
                raise CheckpointError(f"{path}: {here} is {kind}, not data stored in the file; refused: not one of "
                                      f"this pipeline's checkpoints; {FIX}")


def _check_consistent(c):
    """Finite weights, and a loss history as long as the iteration says; resuming from anything
    else would fail later, far from the cause."""
    problems = [f"{k} holds NaN or infinite values" for k in PARAM_NAMES if not np.all(np.isfinite(c.params[k]))]
    if c.losses.shape != (c.iteration,):
        problems.append(f"{c.losses.shape[0] if c.losses.ndim else 0} losses for iteration {c.iteration}")
    if problems:
        raise CheckpointError(f"{c.path} is inconsistent ({'; '.join(problems)}): {FIX}")


def iteration_of(path):
    """The iteration a checkpoint file's name says (iter-00000600.h5: 600), or None for other names."""
    match = NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(checkpoint_dir):
    """Checkpoint files in iteration order (temporary files and other names are ignored)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    named = [(iteration_of(p), p) for p in checkpoint_dir.iterdir() if iteration_of(p) is not None]
    return [p for _, p in sorted(named)]


def valid_prefix(checkpoint_dir, iterations, run_id, inputs, trusted, where=str):
    """[Checkpoint] at the given iterations, in order, up to (not including) the first one that
    is missing, does not match its record (trusted(path) -> None, or why not), does not load,
    or was made by another run or from other inputs: what a resume may build on. Each one
    refused is logged with the reason, named as where(path) says; nothing is deleted."""
    loaded = []
    for iteration in iterations:
        path = checkpoint_path(checkpoint_dir, iteration)
        distrust = trusted(path)
        if distrust:
            if distrust is not ABSENT:
                logger.warning("not resuming from %s or later: %s", where(path), distrust)
            break
        try:
            c = load_checkpoint(path)
        except CheckpointError as error:
            logger.warning("not resuming from %s or later: %s", where(path), error)
            break
        reason = (f"it belongs to run {c.run_id}" if c.run_id != run_id else
                  f"it is for iteration {c.iteration}" if c.iteration != iteration else
                  "it was trained from other data" if c.inputs != inputs else None)
        if reason:
            logger.warning("not resuming from %s or later: %s", where(path), reason)
            break
        loaded.append(c)
    return loaded


def describe_h5(path):
    """A readable listing of any HDF5 file: groups, datasets (shape, dtype) and attributes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    lines = []

    def attributes(obj, indent):
        for key, value in obj.attrs.items():
            text = str(_plain(value))
            lines.append(f"{indent}@{key} = {text if len(text) <= 100 else text[:97] + '...'}")

    def visit(name, obj):
        depth = "  " * name.count("/")
        if isinstance(obj, h5py.Dataset):
            lines.append(f"{depth}{name.split('/')[-1]}  dataset {obj.shape} {obj.dtype}")
        else:
            lines.append(f"{depth}{name.split('/')[-1]}/")
        attributes(obj, depth + "  ")

    try:
        with h5py.File(path, "r") as f:
            lines.append(f"{path}")
            attributes(f, "  ")
            f.visititems(visit)
    except OSError as error:
        raise CheckpointError(f"{path} is not an HDF5 file ({error})") from None
    return "\n".join(lines)


def _json(obj):
    """JSON text of obj; numpy arrays and scalars (bit generator states, hyperparameters taken
    from numpy) become lists and plain numbers. Python ints keep every digit (PCG64's are 128-bit)."""
    def plain(value):
        if isinstance(value, (np.ndarray, np.generic)):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} cannot be stored as JSON")
    return json.dumps(obj, sort_keys=True, default=plain)


def _plain(value):
    """h5py attribute values as plain Python: bytes to str, numpy scalars to numbers."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def kept_checkpoints(iterations, per_epoch, keep_last, keep_every):
    """The checkpoint iterations to keep once training is done: all of them without keep_last,
    else the last keep_last and, with keep_every = k, those of every k-th epoch."""
    if not keep_last:
        return list(iterations)
    every = {i for i in iterations if keep_every and i % (keep_every * per_epoch) == 0}
    return sorted(set(iterations[-keep_last:]) | every)
