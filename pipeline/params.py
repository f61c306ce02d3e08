"""The parameter types of the tasks: each value is checked once, wherever it comes from (a
flag, luigi.cfg, Python), and a bad one is a one-line ParameterError naming it."""

import datetime
import json
import math
import re

import luigi
import luigi.configuration
from luigi.parameter import OptionalParameterMixin, ParameterVisibility

from pipeline import storage
from pipeline.download import default_mirrors, validate_dataset_name
from pipeline.errors import ParameterError
from pipeline.picture import FRAMINGS
from pipeline.training import DTYPES, SAMPLINGS, iterations_per_epoch

def from_config(section, name):
    """A parameter's luigi.cfg place: [section] name."""
    return {"section": section, "name": name}


class _Checked:
    """A parameter that knows its name, for one-line errors that say which value is wrong."""

    name = "value"

    def __set_name__(self, owner, name):
        self.name = name
        getattr(super(), "__set_name__", lambda *_: None)(owner, name)  # luigi < 3.8 has none

    def invalid(self, x, allowed):
        return ParameterError(f"invalid {self.name}={x}: must be {allowed} (check the command line and luigi.cfg)")


class WholeNumber(_Checked, luigi.IntParameter):
    """A whole number from minimum to maximum; anything else (also 50.7 or true) is a one-line
    ParameterError."""

    def __init__(self, *args, minimum=1, maximum=None, **kwargs):
        self.minimum, self.maximum = minimum, maximum
        super().__init__(*args, **kwargs)

    def parse(self, x):
        return self.normalize(x)

    def normalize(self, x):
        value = _whole_number(x)
        if value is None or value < self.minimum or (self.maximum is not None and value > self.maximum):
            bound = f" and <= {self.maximum}" if self.maximum is not None else ""
            raise self.invalid(x, f"a whole number >= {self.minimum}{bound}")
        return value


class Number(_Checked, luigi.FloatParameter):
    """A finite number > 0; anything else is a one-line ParameterError."""

    def parse(self, x):
        return self.normalize(x)

    def normalize(self, x):
        value = _number(x)
        if value is None or value <= 0:
            raise self.invalid(x, "a number > 0")
        return value


class Choice(_Checked, luigi.Parameter):
    """One of a few words."""

    def __init__(self, *args, choices, **kwargs):
        self.choices = tuple(choices)
        super().__init__(*args, **kwargs)

    def normalize(self, x):
        if x not in self.choices:
            raise self.invalid(x, " or ".join(self.choices))
        return x


class DatasetName(luigi.Parameter):
    """A dataset name, which becomes a directory under data/ and artifacts/."""

    def normalize(self, x):
        validate_dataset_name(x)
        return x


class RunDate(_Checked, OptionalParameterMixin, luigi.DateParameter):
    """An optional date (YYYY-MM-DD), as luigi's range tools pass it."""

    expected_type = datetime.date

    def parse(self, x):
        if isinstance(x, str) and x:
            try:
                if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", x):
                    raise ValueError(x)
                return datetime.date.fromisoformat(x)
            except ValueError:
                raise self.invalid(x, "a date like 2026-11-22 (YYYY-MM-DD)") from None
        return super().parse(x)

    def normalize(self, x):
        if isinstance(x, str):
            x = self.parse(x)
        if x is not None and not isinstance(x, datetime.date):
            raise self.invalid(x, "a date like 2026-11-22 (YYYY-MM-DD)")
        return super().normalize(x)


class NumberList(_Checked, luigi.OptionalListParameter):
    """An optional list of numbers > 0 (whole ones when `whole`, from minimum to maximum)."""

    def __init__(self, *args, whole=False, minimum=1, maximum=None, **kwargs):
        self.whole, self.minimum, self.maximum = whole, minimum, maximum
        super().__init__(*args, **kwargs)

    def normalize(self, x):
        if x is None:
            return None
        items = list(x) if isinstance(x, (list, tuple)) else None
        kind = f"whole numbers >= {self.minimum}" if self.whole else "numbers > 0"
        values = [(_whole_number(v) if self.whole else _number(v)) for v in items or []]
        too_large = self.maximum is not None and any(v is not None and v > self.maximum for v in values)
        if not items or too_large or any(v is None or (v < self.minimum if self.whole else v <= 0) for v in values):
            raise self.invalid(list(x) if isinstance(x, tuple) else x, f"a non-empty list of {kind}, like [50, 100]")
        return tuple(values)


def _whole_number(x):
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, str) and x.strip().lstrip("+-").isdigit():
        return int(x)
    return None


def _number(x):
    if isinstance(x, bool):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class sources(luigi.Config):
    """[sources] in luigi.cfg: where DownloadDataset looks, and how patiently."""

    local_dirs = luigi.ListParameter(
        default=["/usr/share/datasets/{dataset}"],
        description="Local directories searched before any mirror; {dataset} is replaced by the name.")
    timeout = Number(default=30.0, description="Seconds before a silent connection is given up.")
    retries = WholeNumber(default=3, description="Tries per mirror for transient errors (reset, 5xx).")


class Directory(_Checked, luigi.Parameter):
    """A local directory, or s3://bucket/prefix on any S3-compatible store (needs boto3)."""

    def normalize(self, x):
        location = storage.parse(x, what=self.name)
        storage.require_backend(location)
        return location




HIDDEN = ParameterVisibility.HIDDEN
MAX_HIDDEN = 100_000  # W1 of 784 x 100,000 float64 is 630 MB; more would not fit a worker's memory


class DataParameters:
    """The parameters of every task: the dataset and where its files live and come from. Only
    `dataset` identifies the data; the rest says where to find it."""

    dataset = DatasetName(
        default="mnist", description="mnist, fashion-mnist, or the name of a custom IDX dataset in a local directory.")
    data_dir = Directory(
        default="data", significant=False, visibility=HIDDEN, config_path=from_config("paths", "data_dir"),
        description="Root of raw/ and processed/ datasets: a directory or s3://bucket/prefix.")
    source_dir = luigi.OptionalParameter(
        default=None, significant=False, visibility=HIDDEN,
        description="A directory holding the four IDX files (gzipped or not); tried first.")
    local_dirs = luigi.OptionalListParameter(
        default=None, significant=False, visibility=HIDDEN,
        description="Local directories to search before the mirrors; default [sources] local_dirs.")
    mirrors = luigi.OptionalListParameter(
        default=None, significant=False, visibility=HIDDEN,
        description="Mirror base URLs, tried in order; default [mirrors] <dataset> in luigi.cfg.")
    checksums = luigi.OptionalDictParameter(
        default=None, significant=False, visibility=HIDDEN,
        description="Accepted hashes per file name, replacing the known ones (for private mirrors and tests).")
    timeout = luigi.OptionalFloatParameter(
        default=None, significant=False, visibility=HIDDEN,
        description="Seconds before a silent mirror is given up; default [sources] timeout.")
    retries = luigi.OptionalIntParameter(
        default=None, significant=False, visibility=HIDDEN,
        description="Tries per mirror for transient errors; default [sources] retries.")
    cache_dir = luigi.Parameter(
        default="cache", significant=False, visibility=HIDDEN, config_path=from_config("paths", "cache_dir"),
        description="With a bucket for data or artifacts: this worker's local copies of what it reads and writes.")
    framing = Choice(
        default="auto", choices=("auto", *FRAMINGS), significant=False, visibility=HIDDEN,
        config_path=from_config("data", "framing"),
        description="How a picture is made into this dataset's 28x28 input: mnist (the figure's longer side 20 px, "
                    "centred by mass), fill (scaled to fill 28 px, centred), or auto (fill for fashion-mnist, "
                    "else mnist). Recorded in images.h5 and the model.")
    lease_seconds = Number(
        default=60.0, significant=False, visibility=HIDDEN, config_path=from_config("paths", "lease_seconds"),
        description="With a bucket: how long a task's lock in the bucket outlives a worker that died holding it.")


class RunParameters:
    """The parameters of one training run: all but the plumbing change the result, so they
    name the run directory (runs.identity)."""

    artifacts_dir = Directory(
        default="artifacts", significant=False, visibility=HIDDEN, config_path=from_config("paths", "artifacts_dir"),
        description="Root of the run directories and runs.csv: a directory or s3://bucket/prefix.")
    hidden_size = WholeNumber(default=50, maximum=MAX_HIDDEN, config_path=from_config("training", "hidden_size"),
                              description="Units in the hidden layer.")
    batch_size = WholeNumber(default=100, config_path=from_config("training", "batch_size"),
                             description="Images per mini-batch.")
    learning_rate = Number(default=0.1, config_path=from_config("training", "learning_rate"),
                           description="SGD step size.")
    iterations = WholeNumber(default=10000, maximum=10**9, config_path=from_config("training", "iterations"),
                             description="SGD steps in all.")
    weight_init_std = Number(default=0.01, config_path=from_config("training", "weight_init_std"),
                             description="Standard deviation of the initial weights.")
    seed = WholeNumber(default=0, minimum=0, maximum=2**63 - 1, config_path=from_config("training", "seed"),
                       description="Seed of the run's random generator.")
    dtype = Choice(default="float32", choices=DTYPES, config_path=from_config("training", "dtype"),
                   description="float32 or float64.")
    sampling = Choice(default="with-replacement", choices=SAMPLINGS, config_path=from_config("training", "sampling"),
                      description="with-replacement (independent batches) or shuffle (a permutation per epoch).")
    date = RunDate(default=None, description="A date (YYYY-MM-DD) that is part of the run's identity: a "
                                             "scheduled job's fresh run per day. Unset: no date.")
    validation_size = WholeNumber(
        default=0, minimum=0, config_path=from_config("training", "validation_size"),
        description="Training images held out (class-stratified) to choose epochs and runs by; training draws "
                    "from the rest. 0: none, the book's setup.")
    split_seed = WholeNumber(
        default=0, minimum=0, maximum=2**63 - 1, config_path=from_config("training", "split_seed"),
        description="Seed of the validation split (not the run's seed): runs with the same one hold out the "
                    "same images.")
    patience = WholeNumber(
        default=0, minimum=0, config_path=from_config("training", "patience"),
        description="Stop when validation accuracy has not improved for this many epochs (0: never). Needs "
                    "validation_size.")
    blas_threads = WholeNumber(
        default=1, significant=False, visibility=HIDDEN, config_path=from_config("training", "blas_threads"),
        description="Threads of the matrix library. The last bits of a result depend on it: resume with the "
                    "same value.")
    keep_last = WholeNumber(
        default=0, minimum=0, significant=False, visibility=HIDDEN, config_path=from_config("training", "keep_last"),
        description="Once a run is trained, keep only its last N checkpoints (0: keep every one), on a disk or in "
                    "a bucket. The report does not need them: model.h5 holds every epoch's figures.")
    keep_every = WholeNumber(
        default=0, minimum=0, significant=False, visibility=HIDDEN, config_path=from_config("training", "keep_every"),
        description="With keep_last, also keep the checkpoint of every k-th epoch (0: none).")


class SweepParameters:
    """The lists a sweep combines, and its bound."""

    # the single-run values serve as the lists' defaults: hidden from luigid's pages beside the lists
    hidden_size = WholeNumber(default=50, maximum=MAX_HIDDEN, visibility=HIDDEN,
                              config_path=from_config("training", "hidden_size"),
                              description="Hidden size when hidden_sizes is not given.")
    batch_size = WholeNumber(default=100, visibility=HIDDEN, config_path=from_config("training", "batch_size"),
                             description="Batch size when batch_sizes is not given.")
    learning_rate = Number(default=0.1, visibility=HIDDEN, config_path=from_config("training", "learning_rate"),
                           description="Learning rate when learning_rates is not given.")
    seed = WholeNumber(default=0, minimum=0, maximum=2**63 - 1, visibility=HIDDEN,
                       config_path=from_config("training", "seed"), description="Seed when seeds is not given.")
    hidden_sizes = NumberList(default=None, whole=True, maximum=MAX_HIDDEN,
                              description="Hidden sizes; default [hidden_size].")
    learning_rates = NumberList(default=None, description="Learning rates; default [learning_rate].")
    batch_sizes = NumberList(default=None, whole=True, description="Batch sizes; default [batch_size].")
    seeds = NumberList(default=None, whole=True, minimum=0, maximum=2**63 - 1,
                       description="Seeds; default [seed].")
    max_sweep_runs = WholeNumber(default=256, significant=False, visibility=HIDDEN,
                                 config_path=from_config("training", "max_sweep_runs"),
                                 description="The most runs one sweep may schedule.")


def check_fits_data(batch_size, iterations, train_size, validation_size=0):
    """ParameterError unless the batch fits the training images left after the validation split
    and the run lasts one epoch of them at least."""
    if train_size < 1:
        raise ParameterError("the training set is empty: give a dataset with training images")
    if validation_size and validation_size > train_size - batch_size:
        raise ParameterError(f"invalid validation_size={validation_size}: must leave a batch ({batch_size}) of the "
                             f"{train_size} training images to train on (at most {max(train_size - batch_size, 0)})")
    train_size -= validation_size
    if batch_size > train_size:
        raise ParameterError(f"invalid batch_size={batch_size}: must be at most the {train_size} training images")
    per_epoch = iterations_per_epoch(train_size, batch_size)
    if iterations < per_epoch:
        raise ParameterError(f"invalid iterations={iterations}: must be at least one epoch ({per_epoch} iterations "
                             f"of batch {batch_size} over {train_size} images)")


def configured_mirrors(dataset):
    """[mirrors] <dataset> in luigi.cfg (a JSON list of URLs), else the built-in list."""
    configured = luigi.configuration.get_config().get("mirrors", dataset, None)
    if not configured:
        return default_mirrors(dataset)
    try:
        mirrors = json.loads(configured)
    except json.JSONDecodeError as error:
        mirrors = error
    if not (isinstance(mirrors, list) and all(isinstance(m, str) for m in mirrors)):
        problem = f" ({mirrors})" if isinstance(mirrors, json.JSONDecodeError) else ""
        raise ParameterError(
            f"[mirrors] {dataset} in luigi.cfg is not a JSON list of URLs{problem}: write it like "
            f'{dataset} = ["https://example.org/mnist/", "https://mirror.example.net/mnist/"]')
    return mirrors
