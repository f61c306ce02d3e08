"""The Luigi tasks of mnist-pipeline, each stage cached on disk and trusted only while its
lineage record still matches the files on both sides.

    luigi --module pipeline.tasks EvaluateNetwork --dataset fashion-mnist --local-scheduler

DownloadDataset -> NormalizeImages, EncodeLabels -> CheckGradient -> TrainNetwork -> EvaluateNetwork
"""

import datetime
import hashlib
import itertools
import json
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import luigi
import luigi.interface
import luigi.tools.range  # noqa: F401  (RangeDaily and RangeDailyBase, for backfills)
import numpy as np
from luigi.parameter import OptionalParameterMixin, ParameterVisibility
from threadpoolctl import threadpool_limits

from pipeline import checkpoint, lineage, logs, processed, report, runs, storage
from pipeline.atomic import atomic_path, exclusive_lock, temporaries_of, write_atomically
from pipeline.download import (default_mirrors, fetch_dataset, known_train_size, load_raw_dataset,
                               staging_directories, validate_dataset_name)
from pipeline.errors import DataError, GradientCheckError, ParameterError, PipelineError
from pipeline.evaluation import BackgroundEvaluator, confusion_matrix, evaluate
from pipeline.gradient_check import check_rows, gradient_check_report
from pipeline.network import TwoLayerNet
from pipeline.sweep import write_sweep_summary
from pipeline.training import (DTYPES, SAMPLINGS, EarlyStopping, checkpoint_iterations, iterations_per_epoch,
                               split_digest, train, training_rows, validation_split)

# [paths] and [training] hold settings shared by every task; luigi warns that it prefers a
# section per task. One section per setting is what we want.
warnings.filterwarnings(
    "ignore", message=r"The use of the configuration \[(paths|training)\]", category=DeprecationWarning)

logger = logs.logger
logs.install()
HIDDEN = ParameterVisibility.HIDDEN
MAX_HIDDEN = 100_000  # W1 of 784 x 100,000 float64 is 630 MB; more would not fit a worker's memory


def _from(section, name):
    return {"section": section, "name": name}


# --- parameters: each value is checked once, wherever it comes from (flag, luigi.cfg, Python) ---

class _Checked:
    """A parameter that knows its name, for one-line errors that say which value is wrong."""

    name = "value"

    def __set_name__(self, owner, name):
        self.name = name
        super().__set_name__(owner, name)

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


# --- the chain ---

class Directory(_Checked, luigi.Parameter):
    """A local directory, or s3://bucket/prefix on any S3-compatible store (needs boto3)."""

    def normalize(self, x):
        x = str(x)
        if "://" in x and not storage.is_s3(x):
            raise self.invalid(x, "a directory path or s3://bucket/prefix")
        storage.require_backend(x)
        return x.rstrip("/") if storage.is_s3(x) else x


class PipelineTask(luigi.Task):
    """What every stage shares: the dataset and where its files live and come from.

    Complete means the task's lineage record vouches for its outputs and for the current
    files of its inputs, and every task upstream is complete too. Only `dataset` identifies
    the data; the rest says where to find it.
    """

    dataset = DatasetName(
        default="mnist", description="mnist, fashion-mnist, or the name of a custom IDX dataset in a local directory.")
    data_dir = Directory(
        default="data", significant=False, visibility=HIDDEN, config_path=_from("paths", "data_dir"),
        description="Root of raw/ and processed/ datasets.")
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
        default="cache", significant=False, visibility=HIDDEN, config_path=_from("paths", "cache_dir"),
        description="With s3:// data or artifacts: this worker's local copies of what it reads and writes.")
    lease_seconds = Number(
        default=60.0, significant=False, visibility=HIDDEN, config_path=_from("paths", "lease_seconds"),
        description="With s3://: how long a task's lock in the bucket outlives a worker that died holding it.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sources()  # [sources] in luigi.cfg is checked now, before anything runs
        workers = luigi.interface.core().workers
        if not (isinstance(workers, int) and workers >= 1):  # luigi's own flag: 0 would run nothing, silently
            raise ParameterError(f"invalid workers={workers}: must be a whole number >= 1")
        for name in ("timeout", "retries"):  # checked like [sources]' own values
            if getattr(self, name) is not None:
                getattr(sources, name).normalize(getattr(self, name))

    def complete(self):
        return self.stale_reason() is None

    def stale_reason(self):
        """None when complete; otherwise why the task would run ("missing", "input changed: ...")."""
        for requirement in luigi.task.flatten(self.requires()):
            reason = requirement.stale_reason()
            if reason is not None:
                return f"{requirement.get_task_family()} would run ({reason})"
        return lineage.problem(self.where(self.record_path()),
                               {label: self.where(path) for label, path in self.record_inputs().items()})

    # --- where files live: local paths, or local copies of s3:// locations ---

    @property
    def data_root(self):
        return _local_root(self.data_dir, self.cache_dir, "data")

    def roots(self):
        """[(local root, the location it stands for)] of the files this task reads and writes."""
        return [(self.data_root, self.data_dir)]

    def where(self, path):
        """The location a local path stands for: itself, or its s3:// location when its root is a bucket."""
        path = Path(path)
        for root, location in self.roots():
            if storage.is_s3(location) and path.is_relative_to(root):
                return storage.join(location, *path.relative_to(root).parts)
        return str(path)

    def remote(self):
        """Whether this task's outputs live in a bucket."""
        return storage.is_s3(self.where(self.output().path))

    def pull(self):
        """With a bucket: the local copies of every requirement's outputs, fetched as recorded."""
        for requirement in luigi.task.flatten(self.requires()):
            for location, path in requirement.published_files():
                _copy_in(location, path, Path(self.cache_dir) / "objects")

    def published_files(self):
        """[(location, local path)] of the outputs as recorded (with a bucket: its locations)."""
        record = self.where(self.record_path())
        entries = (lineage.read_record(record) or {"outputs": {}})["outputs"].values()
        return [(lineage.resolve(record, entry["path"]), os.path.normpath(self.record_path().parent / entry["path"]))
                for entry in entries] + [(record, self.record_path())]

    def files_to_publish(self, outputs):
        """The local files to publish once made, the record last."""
        return [*outputs.values(), self.record_path()]

    def push(self, paths):
        """With a bucket: publish these local files (whole), each unless it is there already."""
        for path in paths:
            location = self.where(path)
            if storage.is_s3(location) and storage.remote_digest(location) != lineage.file_digest(path):
                storage.publish(path, location)

    def record_path(self):
        """The task's lineage record: <directory of its output>/lineage/<Task>.json."""
        return Path(self.output().path).parent / "lineage" / f"{self.get_task_family()}.json"

    def record_inputs(self):
        """{label: path} of the files the output is made from."""
        return {}

    def run(self):
        """Make the outputs once: processes running this same task take turns on a lock (in the
        bucket, with s3://) and the later ones find the work done. Then record what was made
        from what, and with a bucket publish the outputs, the record last."""
        with self.lock():
            if self.complete():
                logger.info("%s: made by another process meanwhile", self.task_id)
                return
            for leftover in self.leftovers():  # only this task writes them, and we hold its lock
                logger.info("removing %s, left by an interrupted run", leftover)
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            Path(self.record_path()).unlink(missing_ok=True)  # no record vouches for a half-made output
            if self.remote():
                self.pull()
            started = time.perf_counter()
            outputs = self.make()
            if outputs is not None:
                lineage.write_record(self.record_path(), outputs=outputs, inputs=self.record_inputs(),
                                     locate=self.where, task_id=self.task_id,
                                     seconds=round(time.perf_counter() - started, 3), **self.record_facts())
            if self.remote():
                self.push(self.files_to_publish(outputs))
            self.published()

    def lock(self):
        """This task's lock: a lease in the bucket with s3://, else a lock file."""
        if self.remote():
            root = self.where(Path(self.lock_root()))
            return storage.Lease(storage.join(root, ".locks", self.task_id), f"{socket.gethostname()}:{os.getpid()}",
                                 ttl_seconds=self.lease_seconds)
        return exclusive_lock(Path(self.lock_root()) / ".locks" / f"{self.task_id}.lock")

    def make(self):
        """Write the outputs; return {label: path} of them for the lineage record."""
        raise NotImplementedError

    def published(self):
        """Called once the record is written."""

    def record_facts(self):
        """More JSON-ready facts for the lineage record (none by default)."""
        return {}

    def lock_root(self):
        return self.data_root

    def leftovers(self):
        """Temporary files of an earlier, killed run of this task."""
        return temporaries_of(self.output().path) + temporaries_of(Path(self.record_path()))

    def on_failure(self, exception):
        return logs.user_message(exception) or super().on_failure(exception)

    def data_params(self):
        """The shared parameters, to pass to an upstream task unchanged."""
        return {name: getattr(self, name) for name, _ in PipelineTask.get_params()}


class DownloadDataset(PipelineTask):
    """The dataset's four IDX files, verified, in <data_dir>/raw/<dataset>/ with MANIFEST.json.

    luigi --module pipeline.tasks DownloadDataset --dataset fashion-mnist --local-scheduler
    """

    def output(self):
        return luigi.LocalTarget(str(self.data_root / "raw" / self.dataset / "MANIFEST.json"))

    def stale_reason(self):
        """MANIFEST.json is this stage's record: every file must still have the recorded digest,
        and a custom dataset must come from the source directory asked for."""
        manifest_path = self.where(self.output().path)
        if not storage.exists(manifest_path):
            return "missing"
        try:
            entries = json.loads(storage.read_bytes(manifest_path))["files"]
            for location, entry in zip(self.raw_files(manifest_path, entries), entries.values()):
                if not storage.exists(location):
                    return f"missing: {location}"
                if lineage.file_digest(location) != entry["sha256"]:
                    return f"changed or damaged: {location}"
        except (OSError, ValueError, KeyError, TypeError) as error:
            return f"damaged: {manifest_path} ({error})"
        if self.source_dir and known_train_size(self.dataset) is None:
            sources_now = {str(Path(entry.get("source", "")).parent) for entry in entries.values()}
            if sources_now != {str(Path(self.source_dir))}:
                return f"made from {', '.join(sorted(sources_now))}, not --source-dir {self.source_dir}"
        return None

    def raw_files(self, manifest_path, entries):
        """The locations of the files a manifest lists, beside it."""
        folder = manifest_path.rsplit("/", 1)[0] if storage.is_s3(manifest_path) else str(Path(manifest_path).parent)
        return [storage.join(folder, entry["stored_as"]) for entry in entries.values()]

    def published_files(self):
        manifest = self.where(self.output().path)
        entries = json.loads(storage.read_bytes(manifest))["files"]
        local = Path(self.output().path).parent
        return [*((location, local / entry["stored_as"]) for location, entry in
                  zip(self.raw_files(manifest, entries), entries.values())), (manifest, Path(self.output().path))]

    def files_to_publish(self, outputs):
        manifest = Path(self.output().path)
        entries = json.loads(manifest.read_text())["files"]
        return [*(manifest.parent / entry["stored_as"] for entry in entries.values()), manifest]

    def leftovers(self):
        return staging_directories(Path(self.output().path).parent)

    def make(self):
        settings = sources()
        manifest = fetch_dataset(
            self.dataset, Path(self.output().path).parent, source_dir=self.source_dir,
            local_dirs=settings.local_dirs if self.local_dirs is None else self.local_dirs,
            mirrors=self.configured_mirrors() if self.mirrors is None else self.mirrors,
            checksums=self.checksums,
            timeout=settings.timeout if self.timeout is None else self.timeout,
            retries=settings.retries if self.retries is None else self.retries,
            progress=self.show_progress,
        )
        logger.info("%s: %d files verified (%s)", self.dataset, len(manifest["files"]), manifest["verified_with"])
        return None  # MANIFEST.json is the record

    def configured_mirrors(self):
        """[mirrors] <dataset> in luigi.cfg (a JSON list of URLs), else the built-in list."""
        configured = luigi.configuration.get_config().get("mirrors", self.dataset, None)
        if not configured:
            return default_mirrors(self.dataset)
        try:
            mirrors = json.loads(configured)
        except json.JSONDecodeError as error:
            mirrors = error
        if not (isinstance(mirrors, list) and all(isinstance(m, str) for m in mirrors)):
            problem = f" ({mirrors})" if isinstance(mirrors, json.JSONDecodeError) else ""
            raise ParameterError(
                f"[mirrors] {self.dataset} in luigi.cfg is not a JSON list of URLs{problem}: write it like "
                f'{self.dataset} = ["https://example.org/mnist/", "https://mirror.example.net/mnist/"]')
        return mirrors

    def show_progress(self, fraction, message):
        logger.info(message)
        self.set_status_message(message)
        self.set_progress_percentage(round(100 * fraction))


class _ProcessTask(PipelineTask):
    """A processed file made from the raw files listed in MANIFEST.json."""

    kind = None  # "images" or "labels"

    def requires(self):
        return DownloadDataset(**self.data_params())

    def output(self):
        return luigi.LocalTarget(str(self.data_root / "processed" / self.dataset / f"{self.kind}.h5"))

    def record_inputs(self):
        return {"MANIFEST.json": self.input().path}

    def make(self):
        arrays, checksums = load_raw_dataset(Path(self.input().path).parent, self.kind)
        with atomic_path(self.output().path) as tmp:
            self.write(tmp, arrays["train"], arrays["test"], checksums)
        return {f"{self.kind}.h5": self.output().path}


class NormalizeImages(_ProcessTask):
    """Images as float32 in [0, 1], shape (n, 784): <data_dir>/processed/<dataset>/images.h5.

    luigi --module pipeline.tasks NormalizeImages --dataset fashion-mnist --local-scheduler
    """

    kind = "images"

    def write(self, path, train, test, checksums):
        processed.write_images(path, processed.normalize_images(train), processed.normalize_images(test),
                               dataset=self.dataset, source_sha256=checksums)


class EncodeLabels(_ProcessTask):
    """Labels one-hot (n, 10) and as integers: <data_dir>/processed/<dataset>/labels.h5.

    luigi --module pipeline.tasks EncodeLabels --dataset fashion-mnist --local-scheduler
    """

    kind = "labels"

    def write(self, path, train, test, checksums):
        processed.write_labels(path, train, test, processed.one_hot(train), processed.one_hot(test),
                               dataset=self.dataset, source_sha256=checksums)


class RunTask(PipelineTask):
    """The parameters of one training run: all but the plumbing change the result, so they
    name the run directory (runs.run_name)."""

    artifacts_dir = Directory(
        default="artifacts", significant=False, visibility=HIDDEN, config_path=_from("paths", "artifacts_dir"),
        description="Root of the run directories and runs.csv.")
    hidden_size = WholeNumber(default=50, maximum=MAX_HIDDEN, config_path=_from("training", "hidden_size"),
                              description="Units in the hidden layer.")
    batch_size = WholeNumber(default=100, config_path=_from("training", "batch_size"),
                             description="Images per mini-batch.")
    learning_rate = Number(default=0.1, config_path=_from("training", "learning_rate"), description="SGD step size.")
    iterations = WholeNumber(default=10000, config_path=_from("training", "iterations"),
                             description="SGD steps in all.")
    weight_init_std = Number(default=0.01, config_path=_from("training", "weight_init_std"),
                             description="Standard deviation of the initial weights.")
    seed = WholeNumber(default=0, minimum=0, config_path=_from("training", "seed"),
                       description="Seed of the run's random generator.")
    dtype = Choice(default="float32", choices=DTYPES, config_path=_from("training", "dtype"),
                   description="float32 or float64.")
    sampling = Choice(default="with-replacement", choices=SAMPLINGS, config_path=_from("training", "sampling"),
                      description="with-replacement (independent batches) or shuffle (a permutation per epoch).")
    date = RunDate(default=None, description="A date (YYYY-MM-DD) that is part of the run's identity: a "
                                             "scheduled job's fresh run per day. Unset: no date.")
    # --- validation split (issue #23) ---
    validation_size = WholeNumber(
        default=0, minimum=0, config_path=_from("training", "validation_size"),
        description="Training images held out (class-stratified) to choose epochs and runs by; training draws "
                    "from the rest. 0: none, the book's setup.")
    split_seed = WholeNumber(
        default=0, minimum=0, config_path=_from("training", "split_seed"),
        description="Seed of the validation split (not the run's seed): runs with the same one hold out the "
                    "same images.")
    patience = WholeNumber(
        default=0, minimum=0, config_path=_from("training", "patience"),
        description="Stop when validation accuracy has not improved for this many epochs (0: never). Needs "
                    "validation_size.")
    blas_threads = WholeNumber(
        default=1, significant=False, visibility=HIDDEN, config_path=_from("training", "blas_threads"),
        description="Threads of the matrix library. The last bits of a result depend on it: resume with the "
                    "same value.")
    keep_last = WholeNumber(
        default=0, minimum=0, significant=False, visibility=HIDDEN, config_path=_from("training", "keep_last"),
        description="Once a run is trained, keep only its last N checkpoints (0: keep every one). The report "
                    "does not need them: model.h5 holds every epoch's figures.")
    keep_every = WholeNumber(
        default=0, minimum=0, significant=False, visibility=HIDDEN, config_path=_from("training", "keep_every"),
        description="With keep_last, also keep the checkpoint of every k-th epoch (0: none).")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.patience and not self.validation_size:
            raise ParameterError(f"invalid patience={self.patience}: early stopping needs a validation split; "
                                 f"give --validation-size too, or --patience 0")
        train_size = known_train_size(self.dataset)
        if train_size is not None:
            check_fits_data(self.batch_size, self.iterations, train_size, self.validation_size)

    @property
    def artifacts_root(self):
        return _local_root(self.artifacts_dir, self.cache_dir, "artifacts")

    def roots(self):
        return [*super().roots(), (self.artifacts_root, self.artifacts_dir)]

    def lock_root(self):
        return self.artifacts_root

    def run(self):
        self.set_status_message(f"run {self.run_id}")  # luigid's pages show it: runs told apart at a glance
        with threadpool_limits(self.blas_threads, user_api="blas"):
            super().run()

    def run_params(self):
        """The shared and run parameters, to pass to an upstream run task unchanged."""
        return {name: getattr(self, name) for name, _ in RunTask.get_params()}

    def hyperparameters(self):
        """Every parameter that changes the result of the run (and so names its directory)."""
        identity = {key: getattr(self, key) for key in (
            "dataset", "hidden_size", "batch_size", "learning_rate", "iterations", "weight_init_std", "dtype",
            "sampling", "seed")}
        if self.date is not None:
            identity["date"] = self.date.isoformat()
        if self.validation_size:  # absent at 0: the runs without a split keep their names
            identity.update(validation_size=self.validation_size, split_seed=self.split_seed)
        if self.patience:
            identity["patience"] = self.patience
        return identity

    @property
    def run_id(self):
        return runs.run_name(self.hyperparameters())

    @property
    def run_dir(self):
        return self.artifacts_root / self.dataset / self.run_id

    def data_requirements(self):
        return {"images": NormalizeImages(**self.data_params()), "labels": EncodeLabels(**self.data_params())}

    def data_files(self):
        return {"images.h5": self.input()["images"].path, "labels.h5": self.input()["labels"].path}

    def load_data(self, parts=("train", "test")):
        """(images, labels) as processed.read_images/read_labels give them, for the parts asked;
        DataError when a part's images and labels are not equally many."""
        images_path, labels_path = self.input()["images"].path, self.input()["labels"].path
        images, labels = processed.read_images(images_path, parts), processed.read_labels(labels_path, parts)
        for part in parts:
            if images[part].shape[0] != labels[f"{part}_labels"].shape[0]:
                raise DataError(f"{images_path} has {images[part].shape[0]} {part} images but {labels_path} has "
                                f"{labels[f'{part}_labels'].shape[0]} labels: rerun to rebuild both from the raw files")
        return images, labels


def _local_root(location, cache_dir, kind):
    """The local directory of a data or artifacts location: itself, or for s3:// a folder of
    cache_dir named by the location (so two buckets never share one)."""
    if not storage.is_s3(location):
        return Path(location)
    return Path(cache_dir) / f"{kind}-{hashlib.sha256(location.encode()).hexdigest()[:12]}"


def _copy_in(location, path, objects):
    """Make the local file `path` hold the content of `location` (fetched through the
    digest-keyed cache `objects`), unless it does already."""
    path = Path(path)
    if not storage.is_s3(location):
        return
    if path.is_file() and lineage.file_digest(path) == storage.remote_digest(location):
        return
    cached = storage.fetch(location, objects)
    with atomic_path(path) as temporary:
        shutil.copyfile(cached, temporary)


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


class CheckGradient(RunTask):
    """Backprop against the numerical gradient on real training images, before training.

    luigi --module pipeline.tasks CheckGradient --dataset fashion-mnist --local-scheduler
    """

    entries_per_param = WholeNumber(default=100, significant=False, visibility=HIDDEN,
                                    description="Entries of each parameter compared (a fixed random subset).")
    tolerance = Number(default=1e-6, significant=False, visibility=HIDDEN, description="Largest relative error accepted.")

    def requires(self):
        return self.data_requirements()

    def output(self):
        return luigi.LocalTarget(str(self.run_dir / "gradient_check.json"))

    def record_inputs(self):
        return self.data_files()

    def make(self):
        images = self.input()["images"].path
        labels = processed.read_labels(self.input()["labels"].path, ("train",))
        rows, rng = check_rows(processed.read_image_rows(images, "train"), self.seed)
        result = gradient_check_report(
            processed.read_image_rows(images, "train", rows), labels["train_labels"][rows], rng,
            n_classes=labels["train_one_hot"].shape[1],
            hidden_size=self.hidden_size, weight_init_std=self.weight_init_std, seed=self.seed,
            entries_per_param=self.entries_per_param, tolerance=self.tolerance)
        result["batch_rows"] = rows.tolist()
        if not result["passed"]:
            failed = self.run_dir / "gradient_check.failed.json"
            write_atomically(failed, json.dumps(result, indent=2) + "\n")
            raise GradientCheckError(
                f"backpropagation disagrees with the numerical gradient: relative error "
                f"{result['worst_relative_error']:.3g} > {self.tolerance:g} (details in {failed})")
        write_atomically(self.output().path, json.dumps(result, indent=2) + "\n")
        return {"gradient_check.json": self.output().path}


class TrainNetwork(RunTask):
    """Mini-batch SGD with one HDF5 checkpoint per epoch, each evaluated on a second thread;
    resumes from the last good checkpoint. model.h5: the final weights and every epoch's figures.

    luigi --module pipeline.tasks TrainNetwork --dataset fashion-mnist --local-scheduler
    """

    def requires(self):
        return {"gradient_check": CheckGradient(**self.run_params()), **self.data_requirements()}

    def output(self):
        return luigi.LocalTarget(str(self.run_dir / "model.h5"))

    def record_inputs(self):
        return {**self.data_files(), "gradient_check.json": self.input()["gradient_check"].path}

    def leftovers(self):
        return (super().leftovers() + temporaries_of(self.run_dir / "checkpoints" / "iter-*.h5")
                + temporaries_of(self.run_dir / "best.h5"))

    def make(self):
        images, labels = self.load_data()
        x_train, t_train = images["train"], labels["train_labels"]
        n_classes = labels["train_one_hot"].shape[1]
        check_fits_data(self.batch_size, self.iterations, x_train.shape[0], self.validation_size)
        inputs = {label: lineage.file_digest(path) for label, path in self.record_inputs().items()}
        held_out, train_rows, split = self.split(t_train)
        if split:  # a checkpoint trained beside other held-out images is not resumed from
            inputs["validation_split"] = split["validation_split_sha256"]
        train_size = x_train.shape[0] if train_rows is None else len(train_rows)
        per_epoch = iterations_per_epoch(train_size, self.batch_size)
        iterations = checkpoint_iterations(train_size, self.batch_size, self.iterations)
        folder = self.run_dir / "checkpoints"
        if self.remote():  # a run another worker started: its checkpoints are in the bucket
            for iteration in iterations:
                path = checkpoint.checkpoint_path(folder, iteration)
                if storage.exists(self.where(path)):
                    _copy_in(self.where(path), path, Path(self.cache_dir) / "objects")
        kept = checkpoint.valid_prefix(folder, iterations, self.run_id, inputs)
        network, rng, start, losses = self.start_from(kept, x_train.shape[1], n_classes)

        def save(iteration, losses_so_far):
            checkpoint.save_checkpoint(
                checkpoint.checkpoint_path(folder, iteration), params=network.params, iteration=iteration,
                epoch=iteration / per_epoch, losses=losses_so_far, rng_state=rng.bit_generator.state,
                hyperparameters=self.hyperparameters(), dataset=self.dataset, run_id=self.run_id, inputs=inputs,
                data_checksums=images["attrs"].get("source_sha256", {}), per_epoch=per_epoch, attrs=split)
            if self.remote():  # every epoch reaches the bucket: another worker can resume from it
                self.push([checkpoint.checkpoint_path(folder, iteration)])
            evaluator.submit(iteration / per_epoch, iteration, network.params)
            self.report_progress(iteration, per_epoch, losses_so_far)

        stopper = EarlyStopping(self.patience)  # with a split: the best epoch by validation; stops with patience

        def should_stop(iteration):  # decided from the validation figures of every checkpoint so far
            return stopper.observe(evaluator.validation_rows())

        with BackgroundEvaluator(x_train, t_train, images["test"], labels["test_labels"], n_classes,
                                 train_rows=train_rows, validation_rows=held_out) as evaluator:
            for c in kept:  # figures of checkpoints made before an interruption
                evaluator.submit(c.epoch, c.iteration, c.params)
            losses = train(network, x_train, t_train, batch_size=self.batch_size, learning_rate=self.learning_rate,
                           iterations=self.iterations, sampling=self.sampling, rng=rng, start_iteration=start,
                           losses=losses, on_checkpoint=save, train_rows=train_rows,
                           should_stop=should_stop if self.patience else None)
            rows = evaluator.results()
        trained_to = len(losses)  # self.iterations unless stopped early
        outputs, model_attrs = {"model.h5": self.output().path}, split
        if split:
            stopper.observe(rows)
            logger.info("%s: %s", self.run_id, stopper.reason())
            model_attrs = {**split, "best_iteration": stopper.best["iteration"], "best_epoch": stopper.best["epoch"],
                           "best_validation_accuracy": stopper.best["validation_accuracy"],
                           "stopped_early": stopper.stopped, "stop_reason": stopper.reason()}
            best = self.run_dir / "best.h5"  # the checkpoint of the best validation accuracy, kept whatever keep_last
            with atomic_path(best) as temporary:
                shutil.copyfile(checkpoint.checkpoint_path(folder, stopper.best["iteration"]), temporary)
            outputs["best.h5"] = best
        checkpoint.save_checkpoint(
            self.output().path, params=network.params, iteration=trained_to, epoch=trained_to / per_epoch,
            losses=losses, rng_state=rng.bit_generator.state, hyperparameters=self.hyperparameters(),
            dataset=self.dataset, run_id=self.run_id, inputs=inputs, per_epoch=per_epoch,
            data_checksums=images["attrs"].get("source_sha256", {}), evaluation=rows, attrs=model_attrs)
        iterations = [i for i in iterations if i <= trained_to]
        kept = kept_checkpoints(iterations, per_epoch, self.keep_last, self.keep_every)
        for iteration in iterations:
            if iteration not in kept:
                checkpoint.checkpoint_path(folder, iteration).unlink(missing_ok=True)
        return {**outputs, **{f"checkpoints/{p.name}": p for p in (checkpoint.checkpoint_path(folder, i) for i in kept)}}

    def split(self, t_train):
        """(held-out indices, training rows, attributes recording the split), or (None, None, None)
        without a validation split. The same labels, size and split_seed give the same split in every run."""
        if not self.validation_size:
            return None, None, None
        held_out = validation_split(np.asarray(t_train), self.validation_size, self.split_seed)
        self.split_record = {"size": self.validation_size, "split_seed": self.split_seed,
                             "sha256": split_digest(held_out)}
        logger.info("%s: holding out %d training images for validation (split sha256 %s)", self.run_id,
                    len(held_out), self.split_record["sha256"])
        return held_out, training_rows(len(t_train), held_out), {
            "validation_size": self.validation_size, "split_seed": self.split_seed,
            "validation_split_sha256": self.split_record["sha256"]}

    def record_facts(self):
        """Facts for the lineage record: the validation split's size, seed and digest."""
        record = getattr(self, "split_record", None)
        return {"validation_split": record} if record else {}

    def start_from(self, kept, input_size, n_classes):
        """(network, rng, start iteration, losses so far): from the last kept checkpoint, or fresh."""
        if not kept:
            logger.info("%s: training from iteration 0", self.run_id)
            rng = np.random.default_rng(self.seed)
            network = TwoLayerNet(input_size, self.hidden_size, n_classes, weight_init_std=self.weight_init_std,
                                  rng=rng, dtype=self.dtype)
            return network, rng, 0, None
        last = kept[-1]
        logger.info("%s: resuming training from iteration %d (%s)", self.run_id, last.iteration, last.path)
        rng = np.random.default_rng()
        rng.bit_generator.state = last.rng_state
        return TwoLayerNet.from_params(last.params), rng, last.iteration, last.losses

    def report_progress(self, iteration, per_epoch, losses):
        epochs = self.iterations / per_epoch
        loss = f", mean mini-batch loss of the epoch {np.mean(losses[-per_epoch:]):.4f}" if iteration else ""
        message = (f"{self.run_id}: epoch {iteration / per_epoch:.4g}/{epochs:.4g}, "
                   f"iteration {iteration}/{self.iterations}{loss}")
        logger.info(message)
        self.set_status_message(message)
        self.set_progress_percentage(round(100 * iteration / self.iterations))


def kept_checkpoints(iterations, per_epoch, keep_last, keep_every):
    """The checkpoint iterations to keep once training is done: all of them without keep_last,
    else the last keep_last and, with keep_every = k, those of every k-th epoch."""
    if not keep_last:
        return list(iterations)
    every = {i for i in iterations if keep_every and i % (keep_every * per_epoch) == 0}
    return sorted(set(iterations[-keep_last:]) | every)


class EvaluateNetwork(RunTask):
    """The run's report: per-epoch accuracy and loss on the whole training and test sets, the
    final model's confusion matrix, and a row in <artifacts_dir>/runs.csv.

    luigi --module pipeline.tasks EvaluateNetwork --dataset fashion-mnist --local-scheduler
    """

    def requires(self):
        return {"model": TrainNetwork(**self.run_params()), **self.data_requirements()}

    def output(self):
        return luigi.LocalTarget(str(self.run_dir / "report" / "report.json"))

    def record_path(self):
        return self.run_dir / "lineage" / "EvaluateNetwork.json"

    def record_inputs(self):
        return {"model.h5": self.input()["model"].path, **self.data_files()}

    def runs_csv(self):
        return self.artifacts_root / "runs.csv"

    def stale_reason(self):
        reason = super().stale_reason()
        if reason is None:
            index = self.where(self.artifacts_root)
            if storage.is_s3(index):  # a row object per run: concurrent workers never lose one
                row = next((r for r in storage.read_runs_index(index) if r.get("run_id") == self.run_id), None)
            else:
                row = next((r for r in runs.read_runs(self.runs_csv()) if r.get("run_id") == self.run_id), None)
            expected = {key: str(value) for key, value in self.runs_row().items() if key in runs.RUN_COLUMNS}
            if row is None or any(str(row.get(key)) != value for key, value in expected.items()):
                reason = f"the runs index ({index}) lacks the run's row or disagrees with its report"
        return reason

    def runs_row(self):
        """The run's row in the runs index, from its report (finished_at aside)."""
        report_json = self.where(self.output().path)
        final = json.loads(storage.read_bytes(report_json))["final"]
        return {"run_id": self.run_id, **self.hyperparameters(), "train_accuracy": final["train_accuracy"],
                "test_accuracy": final["test_accuracy"], "report_sha256": lineage.file_digest(report_json)}

    def leftovers(self):
        return super().leftovers() + temporaries_of(self.run_dir / "report" / "*")

    def make(self):
        model = checkpoint.load_checkpoint(self.input()["model"].path)
        images, labels = self.load_data(("test",))
        n_classes = model.params["b2"].size
        rows = model.evaluation or []
        test_accuracy, _, predictions = evaluate(model.params, images["test"], labels["test_labels"])
        if not rows or rows[-1]["iteration"] != model.iteration or rows[-1]["test_accuracy"] != test_accuracy:
            raise PipelineError(f"{model.path}: its figures do not match its weights (final test accuracy "
                                f"{test_accuracy:.4f} recomputed); delete it and rerun to train it again")
        gradient_check = CheckGradient(**self.run_params())
        records = {task.get_task_family(): lineage.read_record(task.where(task.record_path())) or {}
                   for task in (self.requires()["model"], gradient_check, *self.data_requirements().values())}
        trained = records["TrainNetwork"].get("outputs", {})
        built = report.build_report(
            run_id=self.run_id, dataset=self.dataset, hyperparameters=self.hyperparameters(), epochs=rows,
            confusion=confusion_matrix(labels["test_labels"], predictions, n_classes),
            minibatch_losses=model.losses,
            gradient_check=json.loads(storage.read_bytes(gradient_check.where(gradient_check.output().path))),
            digests={"data": {k: lineage.file_digest(p) for k, p in self.data_files().items()},
                     "model": lineage.file_digest(model.path)},
            checkpoints=[{"file": Path(label).name, "iteration": checkpoint.iteration_of(label),
                          "sha256": entry["sha256"]} for label, entry in trained.items() if label != "model.h5"],
            stage_seconds={name: record.get("seconds") for name, record in records.items() if record},
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        files = report.write_report(self.run_dir / "report", built)
        logger.info("%s: final test accuracy %.4f, report in %s", self.run_id, rows[-1]["test_accuracy"],
                    self.run_dir / "report")
        return files

    def published(self):
        row = self.runs_row()
        runs.add_run(self.runs_csv(), row)
        index = self.where(self.artifacts_root)
        if storage.is_s3(index):
            storage.record_run(index, self.run_id, {**row, "finished_at": runs.now()})
            # writers take turns, each after recording its row: the last one writes every row
            with storage.Lease(storage.join(index, ".locks", "index.html"), f"{socket.gethostname()}:{os.getpid()}",
                               ttl_seconds=self.lease_seconds):
                rows = storage.read_runs_index(index)
                storage.write_bytes(storage.join(index, "index.html"), runs.index_html(index, rows).encode())


class Sweep(RunTask):
    """Train and evaluate every combination of hidden sizes, learning rates, batch sizes and
    seeds, then compare them; with --workers N independent runs train in parallel.

    luigi --module pipeline.tasks Sweep --dataset fashion-mnist --hidden-sizes '[50,100]' \\
          --learning-rates '[0.1,0.5]' --workers 2 --local-scheduler
    """

    # the single-run values serve as the lists' defaults: hidden from luigid's pages beside the lists
    hidden_size = WholeNumber(default=50, maximum=MAX_HIDDEN, visibility=HIDDEN,
                              config_path=_from("training", "hidden_size"),
                              description="Hidden size when hidden_sizes is not given.")
    batch_size = WholeNumber(default=100, visibility=HIDDEN, config_path=_from("training", "batch_size"),
                             description="Batch size when batch_sizes is not given.")
    learning_rate = Number(default=0.1, visibility=HIDDEN, config_path=_from("training", "learning_rate"),
                           description="Learning rate when learning_rates is not given.")
    seed = WholeNumber(default=0, minimum=0, visibility=HIDDEN, config_path=_from("training", "seed"),
                       description="Seed when seeds is not given.")
    hidden_sizes = NumberList(default=None, whole=True, maximum=MAX_HIDDEN,
                              description="Hidden sizes; default [hidden_size].")
    learning_rates = NumberList(default=None, description="Learning rates; default [learning_rate].")
    batch_sizes = NumberList(default=None, whole=True, description="Batch sizes; default [batch_size].")
    seeds = NumberList(default=None, whole=True, minimum=0, description="Seeds; default [seed].")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        train_size = known_train_size(self.dataset)
        for combination in self.combinations():
            if train_size is not None:
                check_fits_data(combination["batch_size"], combination["iterations"], train_size,
                                combination["validation_size"])

    def combinations(self):
        """The run parameters of every run in the sweep, in a fixed order."""
        base = self.run_params()
        grid = itertools.product(self.hidden_sizes or [self.hidden_size], self.learning_rates or [self.learning_rate],
                                 self.batch_sizes or [self.batch_size], self.seeds or [self.seed])
        return [{**base, "hidden_size": h, "learning_rate": lr, "batch_size": b, "seed": s} for h, lr, b, s in grid]

    @property
    def sweep_id(self):
        return runs.sweep_name(task.run_id for task in self.requires())

    def requires(self):
        return [EvaluateNetwork(**combination) for combination in self.combinations()]

    def output(self):
        return luigi.LocalTarget(str(self.artifacts_root / self.dataset / "sweeps" / self.sweep_id / "summary.csv"))

    def record_inputs(self):
        return {task.run_id: target.path for task, target in zip(self.requires(), self.input())}

    def make(self):
        reports = [report.read_report(Path(target.path).parent) for target in self.input()]
        rows, files = write_sweep_summary(Path(self.output().path).parent, self.sweep_id, reports)
        if self.validation_size:
            logger.info("%s: %d runs; best by validation %s (epoch %.4g, validation accuracy %.4f), its test "
                        "accuracy there %.4f", self.sweep_id, len(rows), rows[0]["run_id"], rows[0]["best_epoch"],
                        rows[0]["best_validation_accuracy"], rows[0]["test_accuracy_at_best_epoch"])
        else:
            logger.info("%s: %d runs; best %s with test accuracy %.4f", self.sweep_id, len(rows),
                        rows[0]["run_id"], rows[0]["final_test_accuracy"])
        return files
