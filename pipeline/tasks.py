"""The Luigi tasks of mnist-pipeline: the chain of DESIGN.md, each stage cached on disk.

    luigi --module pipeline.tasks EvaluateNetwork --dataset fashion-mnist --local-scheduler

Tasks are thin: load inputs, call one function of the modules below, write atomically.
Only this module imports luigi. Defaults live in luigi.cfg: [paths], [sources],
[mirrors] and [training].
"""

import errno
import itertools
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import luigi
import numpy as np
from threadpoolctl import threadpool_limits

from pipeline import checkpoint, processed, report
from pipeline.atomic import atomic_path, exclusive_lock, temporaries_of, write_atomically
from pipeline.download import (default_mirrors, fetch_dataset, known_train_size, load_raw_dataset,
                               staging_directories, validate_dataset_name)
from pipeline.errors import CheckpointError, GradientCheckError, ParameterError, PipelineError
from pipeline.evaluation import evaluate_epochs, params_digest
from pipeline.gradcheck import gradient_check_report
from pipeline.network import TwoLayerNet, default_kernel
from pipeline.preprocess import normalize_images, one_hot
from pipeline.runs import run_name, sweep_name, validate_run_date
from pipeline.sweep import write_sweep_summary
from pipeline.training import iterations_per_epoch, train_evaluating, validate_hyperparameters

# Hyperparameter and path defaults are shared by every task through one section of
# luigi.cfg ([training], [paths]); luigi calls that lookup "config_path" and warns that
# it prefers a section per task. One section per setting is what we want, so hush it.
warnings.filterwarnings(
    "ignore", message=r"The use of the configuration \[(paths|training)\]", category=DeprecationWarning
)

logger = logging.getLogger("pipeline")


def user_message(error):
    """The one-line message for an error a user can act on, or None for a bug (whose
    traceback is then worth showing). Errors the pipeline raises on purpose, and the
    operating system's "disk full" or "not allowed" when writing, are of the first kind."""
    cause = error
    while cause is not None and not isinstance(cause, PipelineError):
        cause = cause.__cause__  # luigi re-raises a parameter's parse error from its own
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    if isinstance(error, OSError) and error.errno in USER_ERRNOS:
        where = f" {error.filename}" if error.filename else ""
        return (f"cannot write{where}: {os.strerror(error.errno)}; free some space or fix the permissions "
                f"and rerun (files already written are intact)")
    return None


USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


class _ConciseErrors(logging.Filter):
    """Log an error a user can act on as its one-line message, not a traceback.

    Luigi logs every task failure with logger.exception; for a PipelineError the message
    already names the problem and the fix, and the traceback would bury it. Other
    exceptions (bugs) keep their traceback.
    """

    def filter(self, record):
        message = user_message(record.exc_info[1]) if record.exc_info else None
        if message:
            record.msg = f"{record.getMessage()}: {message}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("luigi-interface").addFilter(_ConciseErrors())


class _ToLuigiLog(logging.Handler):
    """Send the pipeline's own log records (progress, warnings) wherever luigi sends its
    own: luigi configures only its "luigi-interface" logger, at the level of --log-level."""

    def emit(self, record):
        logging.getLogger("luigi-interface").handle(record)


logger.addHandler(_ToLuigiLog())
logger.setLevel(logging.INFO)


def _from(section, name):
    return {"section": section, "name": name}


class WholeNumberParameter(luigi.IntParameter):
    """An IntParameter whose bad value ("abc" on the command line or in luigi.cfg) is a
    one-line ParameterError instead of int()'s traceback."""

    def parse(self, x):
        try:
            return int(x)
        except ValueError:
            raise ParameterError(f"{x!r} is not a whole number: check the command line and luigi.cfg") from None


class NumberParameter(luigi.FloatParameter):
    """A FloatParameter whose bad value is a one-line ParameterError."""

    def parse(self, x):
        try:
            return float(x)
        except ValueError:
            raise ParameterError(f"{x!r} is not a number: check the command line and luigi.cfg") from None


class sources(luigi.Config):
    """[sources] in luigi.cfg: where DownloadDataset looks before the mirrors."""

    local_dirs = luigi.ListParameter(
        default=["/usr/share/datasets/{dataset}"],
        description="Local directories searched before any mirror; {dataset} is replaced by the name.",
    )
    timeout = luigi.FloatParameter(default=30.0, description="Seconds before a silent connection is given up.")
    retries = luigi.IntParameter(default=3, description="Tries per mirror for transient errors (reset, 5xx).")


class DataTask(luigi.Task):
    """Parameters every stage shares: which dataset, where data lives, where it may come from.

    Only `dataset` is significant; the others say where to find things, not what they are.
    None means "use luigi.cfg". Downstream tasks pass their values up unchanged (data_params()).
    """

    dataset = luigi.Parameter(
        default="mnist",
        description="mnist, fashion-mnist, or the name of a custom IDX dataset in a local directory.",
    )
    data_dir = luigi.Parameter(
        default="data", significant=False, config_path=_from("paths", "data_dir"),
        description="Root of raw/ and processed/ datasets.",
    )
    source_dir = luigi.OptionalParameter(
        default=None, significant=False,
        description="A directory holding the four IDX files (gzipped or not); tried first.",
    )
    local_dirs = luigi.OptionalListParameter(
        default=None, significant=False,
        description="Local directories to search before the mirrors; default [sources] local_dirs.",
    )
    mirrors = luigi.OptionalListParameter(
        default=None, significant=False,
        description="Mirror base URLs, tried in order; default [mirrors] <dataset> in luigi.cfg.",
    )
    checksums = luigi.OptionalDictParameter(
        default=None, significant=False,
        description="Accepted hashes per file name, replacing the known ones (for private mirrors and tests).",
    )
    timeout = luigi.OptionalFloatParameter(
        default=None, significant=False, description="Seconds before a silent mirror is given up; default [sources].",
    )
    retries = luigi.OptionalIntParameter(
        default=None, significant=False, description="Tries per mirror for transient errors; default [sources].",
    )

    def run(self):
        """Make the output, once: processes running this same task (two cron jobs, two
        workers on a shared disk) take turns, and the second finds the output made."""
        with exclusive_lock(Path(self.lock_root()) / ".locks" / f"{self.task_id}.lock"):
            if self.complete():
                logger.info("%s: made by another process meanwhile", self.task_id)
                return
            for leftover in self.leftovers():  # stale: only this task writes them, and we hold its lock
                logger.info("removing %s, left by an interrupted run", leftover)
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            self.make()

    def lock_root(self):
        return self.data_dir

    def leftovers(self):
        """Temporary files of an earlier, killed run of this task."""
        return temporaries_of(self.output().path)

    def make(self):
        raise NotImplementedError

    def on_failure(self, exception):
        """What the scheduler shows for a failure: the message alone for a user's error."""
        return user_message(exception) or super().on_failure(exception)

    def data_params(self):
        """The shared parameters, to pass to an upstream task unchanged."""
        return {name: getattr(self, name) for name, _ in DataTask.get_params()}


class DownloadDataset(DataTask):
    """The dataset's four IDX files, verified, in <data_dir>/raw/<dataset>/ with MANIFEST.json.

    luigi --module pipeline.tasks DownloadDataset --dataset fashion-mnist --local-scheduler
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        validate_dataset_name(self.dataset)

    def output(self):
        return luigi.LocalTarget(str(Path(self.data_dir) / "raw" / self.dataset / "MANIFEST.json"))

    def leftovers(self):
        return staging_directories(Path(self.output().path).parent)

    def make(self):
        settings = sources()
        manifest = fetch_dataset(
            self.dataset, Path(self.output().path).parent,
            source_dir=self.source_dir,
            local_dirs=settings.local_dirs if self.local_dirs is None else self.local_dirs,
            mirrors=self.configured_mirrors() if self.mirrors is None else self.mirrors,
            checksums=self.checksums,
            timeout=settings.timeout if self.timeout is None else self.timeout,
            retries=settings.retries if self.retries is None else self.retries,
            progress=self.show_progress,
        )
        logger.info("%s: %d files verified (%s)", self.dataset, len(manifest["files"]), manifest["verified_with"])

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


class NormalizeImages(DataTask):
    """Images as float32 in [0, 1], shape (n, 784): <data_dir>/processed/<dataset>/images.h5.

    luigi --module pipeline.tasks NormalizeImages --dataset fashion-mnist --local-scheduler
    """

    def requires(self):
        return DownloadDataset(**self.data_params())

    def output(self):
        return luigi.LocalTarget(str(Path(self.data_dir) / "processed" / self.dataset / "images.h5"))

    def make(self):
        images, checksums = load_raw_dataset(Path(self.input().path).parent, "images")
        with atomic_path(self.output().path) as tmp:
            processed.write_images(tmp, normalize_images(images["train"]), normalize_images(images["test"]),
                                   dataset=self.dataset, source_sha256=checksums)


class EncodeLabels(DataTask):
    """Labels one-hot (n, 10) and as integers: <data_dir>/processed/<dataset>/labels.h5.

    luigi --module pipeline.tasks EncodeLabels --dataset fashion-mnist --local-scheduler
    """

    def requires(self):
        return DownloadDataset(**self.data_params())

    def output(self):
        return luigi.LocalTarget(str(Path(self.data_dir) / "processed" / self.dataset / "labels.h5"))

    def make(self):
        labels, checksums = load_raw_dataset(Path(self.input().path).parent, "labels")
        train, test = labels["train"], labels["test"]
        with atomic_path(self.output().path) as tmp:
            processed.write_labels(tmp, train, test, one_hot(train), one_hot(test),
                                   dataset=self.dataset, source_sha256=checksums)


class RunTask(DataTask):
    """Parameters of one training run. Every one of them changes the result, so all are in
    the run directory's name (see pipeline.runs.run_name)."""

    artifacts_dir = luigi.Parameter(
        default="artifacts", significant=False, config_path=_from("paths", "artifacts_dir"),
        description="Root of the run directories and runs.csv.",
    )
    hidden_size = WholeNumberParameter(
        default=50, config_path=_from("training", "hidden_size"), description="Units in the hidden layer."
    )
    batch_size = WholeNumberParameter(
        default=100, config_path=_from("training", "batch_size"), description="Images per mini-batch."
    )
    learning_rate = NumberParameter(
        default=0.1, config_path=_from("training", "learning_rate"), description="SGD step size."
    )
    iterations = WholeNumberParameter(
        default=10000, config_path=_from("training", "iterations"), description="SGD steps in all."
    )
    weight_init_std = NumberParameter(
        default=0.01, config_path=_from("training", "weight_init_std"),
        description="Standard deviation of the initial weights.",
    )
    seed = WholeNumberParameter(
        default=0, config_path=_from("training", "seed"), description="Seed of the run's random generator."
    )
    dtype = luigi.Parameter(
        default="float32", config_path=_from("training", "dtype"), description="float32 or float64."
    )
    sampling = luigi.Parameter(
        default="with-replacement", config_path=_from("training", "sampling"),
        description="with-replacement (the seeds' np.random.choice) or shuffle (a permutation per epoch).",
    )
    date = luigi.OptionalParameter(
        default=None,
        description="A date (YYYY-MM-DD) that becomes part of the run's identity: a scheduled job's "
                    "fresh run per day. Unset: runs are identified by their hyperparameters alone.",
    )
    blas_threads = luigi.IntParameter(
        default=1, significant=False, config_path=_from("training", "blas_threads"),
        description="Threads of the matrix library in training and evaluation. 1 (the default): training "
                    "keeps one core and the evaluation of its checkpoints runs on a second, and N runs of "
                    "--workers N do not fight over the cores. The last bits of a result depend on it: "
                    "resume with the same value.",
    )

    def run(self):
        with threadpool_limits(self.blas_threads, user_api="blas"):
            super().run()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Reject bad values when the task is built, before anything runs or is written.
        validate_dataset_name(self.dataset)
        validate_hyperparameters(**self._hyperparameters_to_validate(), train_size=known_train_size(self.dataset))
        validate_run_date(self.date)
        default_kernel()  # and $MNIST_PIPELINE_KERNEL, which chooses how TrainNetwork backpropagates

    def _hyperparameters_to_validate(self):
        return {key: getattr(self, key) for key in (
            "hidden_size", "batch_size", "learning_rate", "iterations", "weight_init_std", "dtype", "sampling")}

    def lock_root(self):
        return self.artifacts_dir

    def run_params(self):
        """The shared and run parameters, to pass to an upstream run task unchanged."""
        return {name: getattr(self, name) for name, _ in RunTask.get_params()}

    def hyperparameters(self):
        """Every parameter that changes the result of the run (and so names its directory)."""
        identity = {"dataset": self.dataset, **self._hyperparameters_to_validate(), "seed": self.seed}
        if self.date is not None:
            identity["date"] = self.date
        return identity

    @property
    def run_id(self):
        return run_name(self.hyperparameters())

    @property
    def run_dir(self):
        return Path(self.artifacts_dir) / self.dataset / self.run_id

    @property
    def figures_dir(self):
        """Per-checkpoint accuracy and loss, written by TrainNetwork's background evaluation."""
        return self.run_dir / "evaluation"

    def data_requirements(self):
        return {"images": NormalizeImages(**self.data_params()), "labels": EncodeLabels(**self.data_params())}

    def load_data(self, parts=("train", "test")):
        """(images, labels) as processed.read_images/read_labels give them, for the parts asked."""
        return (processed.read_images(self.input()["images"].path, parts),
                processed.read_labels(self.input()["labels"].path, parts))


class CheckGradient(RunTask):
    """Backprop against the numerical gradient on real training images, before training.

    luigi --module pipeline.tasks CheckGradient --dataset fashion-mnist --local-scheduler
    """

    entries_per_param = luigi.IntParameter(
        default=100, significant=False, description="Entries of each parameter compared (a fixed random subset)."
    )
    tolerance = luigi.FloatParameter(
        default=1e-6, significant=False, description="Largest relative error accepted."
    )

    def requires(self):
        return self.data_requirements()

    def output(self):
        return luigi.LocalTarget(str(self.run_dir / "gradient_check.json"))

    def make(self):
        images, labels = self.load_data(parts=("train",))
        result = gradient_check_report(
            images["train"], labels["train_one_hot"], hidden_size=self.hidden_size,
            weight_init_std=self.weight_init_std, seed=self.seed,
            entries_per_param=self.entries_per_param, tolerance=self.tolerance,
        )
        if not result["passed"]:
            failed = self.run_dir / "gradient_check.failed.json"
            write_json_atomically(failed, result)
            raise GradientCheckError(
                f"backpropagation disagrees with the numerical gradient: relative error "
                f"{result['worst_relative_error']:.3g} > {self.tolerance:g} (details in {failed})"
            )
        write_json_atomically(self.output().path, result)


class TrainNetwork(RunTask):
    """Mini-batch SGD with one HDF5 checkpoint per epoch; resumes from the newest valid one.

    luigi --module pipeline.tasks TrainNetwork --dataset fashion-mnist --local-scheduler
    """

    def requires(self):
        return {"gradient_check": CheckGradient(**self.run_params()), **self.data_requirements()}

    def output(self):
        return luigi.LocalTarget(str(self.run_dir / "model.h5"))

    def leftovers(self):
        return (super().leftovers() + temporaries_of(self.run_dir / "checkpoints" / "iter-*.h5")
                + temporaries_of(self.figures_dir / "iter-*.json"))

    def make(self):
        kernel = default_kernel()
        images, labels = self.load_data()  # the test split too: each checkpoint is evaluated as it is saved
        x_train = images["train"].astype(self.dtype, copy=False)
        t_train = labels["train_labels"]  # integer labels: the same loss as one-hot, gathered faster
        data_checksums = dict(images["attrs"].get("source_sha256", {}))
        validate_hyperparameters(**self._hyperparameters_to_validate(), train_size=x_train.shape[0])
        write_json_atomically(self.run_dir / "params.json", {"run_id": self.run_id, **self.hyperparameters()})

        checkpoints = self.run_dir / "checkpoints"
        logger.info("%s: backpropagation by the %s", self.run_id,
                    "C kernel (pipeline._kernels)" if kernel == "c" else "numpy implementation")
        network, rng, start, losses = self.resume_or_start(checkpoints, kernel)
        per_epoch = iterations_per_epoch(x_train.shape[0], self.batch_size)

        def save(iteration, losses_so_far):
            path = checkpoint.checkpoint_path(checkpoints, iteration)
            checkpoint.save_checkpoint(
                path, params=network.params, iteration=iteration, epoch=iteration / per_epoch,
                losses=losses_so_far, rng_state=rng.bit_generator.state, hyperparameters=self.hyperparameters(),
                dataset=self.dataset, data_checksums=data_checksums, run_id=self.run_id, backprop=kernel,
            )
            self.report_progress(iteration, per_epoch, losses_so_far)

        train_evaluating(network, x_train, t_train, images["test"], labels["test_labels"],
                         batch_size=self.batch_size, learning_rate=self.learning_rate, iterations=self.iterations,
                         sampling=self.sampling, rng=rng, start_iteration=start, losses=losses, on_checkpoint=save,
                         on_row=lambda row, digest: report.write_epoch_figures(self.figures_dir, row, digest))
        with atomic_path(self.output().path) as tmp:
            shutil.copyfile(checkpoint.checkpoint_path(checkpoints, self.iterations), tmp)

    def resume_or_start(self, checkpoints, kernel):
        """(network, rng, start iteration, losses so far) from the newest valid checkpoint,
        or a fresh network and generator seeded with `seed`. kernel: the Backprop
        implementation this process trains with."""
        latest = checkpoint.latest_checkpoint(checkpoints)
        if latest is None:
            logger.info("%s: training from iteration 0", self.run_id)
            rng = np.random.default_rng(self.seed)
            network = TwoLayerNet(784, self.hidden_size, 10, weight_init_std=self.weight_init_std, rng=rng,
                                  dtype=self.dtype)
            return network, rng, 0, None
        if latest.run_id != self.run_id:
            raise CheckpointError(
                f"{latest.path} belongs to run {latest.run_id}, not {self.run_id}: "
                f"move it out of {checkpoints} and rerun"
            )
        logger.info("%s: resuming training from iteration %d (%s)", self.run_id, latest.iteration, latest.path)
        trained_by = latest.attrs.get("backprop", "")
        if trained_by and trained_by != kernel:
            logger.warning("%s: %s was trained with the %s Backprop and this process uses %s: the run goes on, but its "
                           "last bits will differ from an uninterrupted run (MNIST_PIPELINE_KERNEL=%s resumes as it "
                           "started)", self.run_id, latest.path, trained_by, kernel, trained_by)
        rng = np.random.default_rng()
        rng.bit_generator.state = latest.rng_state
        return TwoLayerNet.from_params(latest.params), rng, latest.iteration, latest.losses

    def report_progress(self, iteration, per_epoch, losses):
        epochs = self.iterations / per_epoch
        loss = float(np.mean(losses[-per_epoch:])) if iteration else float("nan")
        message = (f"{self.run_id}: epoch {iteration / per_epoch:.4g}/{epochs:.4g}, "
                   f"iteration {iteration}/{self.iterations}, mean mini-batch loss {loss:.4f}")
        logger.info(message)
        self.set_status_message(message)
        self.set_progress_percentage(round(100 * iteration / self.iterations))


class EvaluateNetwork(RunTask):
    """Per-epoch accuracy and loss on the whole training and test sets, and the run's report.

    luigi --module pipeline.tasks EvaluateNetwork --dataset fashion-mnist --local-scheduler
    """

    def requires(self):
        return {"model": TrainNetwork(**self.run_params()), **self.data_requirements()}

    def output(self):
        return luigi.LocalTarget(str(self.run_dir / "report" / "metrics.json"))

    def leftovers(self):
        return temporaries_of(self.run_dir / "report" / "*")

    def make(self):
        snapshots = [checkpoint.load_checkpoint(path)
                     for path in checkpoint.list_checkpoints(self.run_dir / "checkpoints")]
        # the figures TrainNetwork kept while training, where they fit the checkpoint's weights
        kept = [report.read_epoch_figures(self.figures_dir, c.iteration, params_digest(c.params)) for c in snapshots]
        missing = kept.count(None)  # an older run, or training was interrupted: evaluated here
        images, labels = self.load_data(("train", "test") if missing else ("test",))
        rows, confusion = evaluate_epochs(
            [(c.epoch, c.iteration, c.params) for c in snapshots],
            images.get("train"), labels.get("train_labels"), images["test"], labels["test_labels"], kept=kept,
        )
        if missing:
            logger.info("%s: evaluated %d of %d checkpoints here, the rest during training",
                        self.run_id, missing, len(snapshots))
        final = snapshots[-1]
        report.append_run(Path(self.artifacts_dir) / "runs.csv", {
            "run_id": self.run_id, **self.hyperparameters(),
            "train_accuracy": rows[-1]["train_accuracy"], "test_accuracy": rows[-1]["test_accuracy"],
        })
        report.write_report(
            self.run_dir / "report", run_id=self.run_id, dataset=self.dataset,
            hyperparameters=self.hyperparameters(), data_checksums=final.data_checksums,
            epochs=rows, minibatch_losses=final.losses, confusion=confusion,
        )
        logger.info("%s: final test accuracy %.4f, report in %s",
                    self.run_id, rows[-1]["test_accuracy"], self.run_dir / "report")


def write_json_atomically(path, obj):
    write_atomically(path, json.dumps(obj, indent=2) + "\n")


_failures = []  # (task, message) of failures in this process, for build()


@luigi.Task.event_handler(luigi.Event.FAILURE)
def _remember_failure(task, exception):
    _failures.append((task, user_message(exception) or f"{type(exception).__name__}: {exception}"))


def build(tasks, workers=1, scheduler_url=None):
    """Run `tasks` and their requirements; the local scheduler unless scheduler_url is given.

    Returns (status, failures): luigi's LuigiStatusCode, and (task, message) for each task
    that failed in this process (with workers > 1 tasks run in child processes and their
    failures are only in the log). A bare True from luigi.build means only "no scheduling
    error", which is why the status is returned.
    """
    del _failures[:]
    options = {"scheduler_url": scheduler_url} if scheduler_url else {"local_scheduler": True}
    result = luigi.build(tasks, detailed_summary=True, workers=workers, **options)
    return result.status, list(_failures)


def exit_code(status):
    """The exit code for a luigi status, from luigi.cfg's [retcode] as the luigi command uses
    it; never 0 for a failure, even where [retcode] is missing."""
    from luigi.execution_summary import LuigiStatusCode
    from luigi.retcodes import retcode

    if status in (LuigiStatusCode.SUCCESS, LuigiStatusCode.SUCCESS_WITH_RETRY):
        return 0
    codes = retcode()
    code = {
        LuigiStatusCode.FAILED: codes.task_failed,
        LuigiStatusCode.FAILED_AND_SCHEDULING_FAILED: max(codes.task_failed, codes.scheduling_error),
        LuigiStatusCode.SCHEDULING_FAILED: codes.scheduling_error,
        LuigiStatusCode.NOT_RUN: codes.not_run,
        LuigiStatusCode.MISSING_EXT: codes.missing_data,
    }.get(status, codes.unhandled_exception)
    return code or 1


def parameter_descriptions(task_class=None):
    """(name, kind, description) of every parameter of a task, EvaluateNetwork by default,
    for a command line that mirrors luigi's flags."""
    task_class = task_class or EvaluateNetwork

    def kind(param):
        if isinstance(param, luigi.IntParameter):
            return int
        return float if isinstance(param, luigi.FloatParameter) else str

    return [(name, kind(param), param.description or "")
            for name, param in task_class.get_params()
            if not isinstance(param, (luigi.ListParameter, luigi.DictParameter))]


class Sweep(RunTask):
    """Train and evaluate every combination of hidden sizes, learning rates, batch sizes and
    seeds, then compare them. Shared stages (download, normalize, encode) run once; with
    --workers N, independent runs train in parallel processes.

    luigi --module pipeline.tasks Sweep --dataset fashion-mnist --hidden-sizes '[50,100]' \\
          --learning-rates '[0.1,0.5]' --workers 2 --local-scheduler
    """

    hidden_sizes = luigi.OptionalListParameter(default=None, description="Hidden sizes; default [hidden_size].")
    learning_rates = luigi.OptionalListParameter(default=None, description="Learning rates; default [learning_rate].")
    batch_sizes = luigi.OptionalListParameter(default=None, description="Batch sizes; default [batch_size].")
    seeds = luigi.OptionalListParameter(default=None, description="Seeds; default [seed].")

    def combinations(self):
        """The run parameters of every run in the sweep, in a fixed order."""
        base = self.run_params()
        grid = itertools.product(self.hidden_sizes or [self.hidden_size], self.learning_rates or [self.learning_rate],
                                 self.batch_sizes or [self.batch_size], self.seeds or [self.seed])
        return [{**base, "hidden_size": int(h), "learning_rate": float(lr), "batch_size": int(b), "seed": int(s)}
                for h, lr, b, s in grid]

    @property
    def sweep_id(self):
        return sweep_name(task.run_id for task in self.requires())

    def requires(self):
        return [EvaluateNetwork(**combination) for combination in self.combinations()]

    def output(self):
        return luigi.LocalTarget(str(Path(self.artifacts_dir) / self.dataset / "sweeps" / self.sweep_id / "summary.csv"))

    def make(self):
        metrics = [json.loads(Path(target.path).read_text()) for target in self.input()]
        rows = write_sweep_summary(Path(self.output().path).parent, self.sweep_id, metrics)
        logger.info("%s: %d runs; best %s with test accuracy %.4f", self.sweep_id, len(rows),
                    rows[0]["run_id"], rows[0]["final_test_accuracy"])
