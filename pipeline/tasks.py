"""The Luigi tasks of mnist-pipeline: each stage cached where its root lives (a disk or a
bucket) and trusted only while its lineage record vouches for its outputs and inputs.

    luigi --module pipeline.tasks EvaluateNetwork --dataset fashion-mnist --local-scheduler

DownloadDataset -> NormalizeImages, EncodeLabels -> CheckGradient -> TrainNetwork -> EvaluateNetwork
"""

import contextlib
import datetime
import functools
import itertools
import json
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
from threadpoolctl import threadpool_limits

from pipeline import canary, checkpoint, lineage, logs, processed, report, runs, storage
from pipeline.atomic import atomic_path, temporaries_of, write_atomically
from pipeline.download import fetch_dataset, known_train_size, load_raw_dataset, peek_train_size, staging_directories
from pipeline.errors import DataError, GradientCheckError, ParameterError, PipelineError
from pipeline.evaluation import BackgroundEvaluator, confusion_matrix, evaluate
from pipeline.gradient_check import check_rows, gradient_check_report
from pipeline.network import TwoLayerNet
from pipeline.params import (HIDDEN, DataParameters, Number, RunParameters, SweepParameters, WholeNumber,
                             check_fits_data, configured_mirrors, sources)
from pipeline.picture import default_framing
from pipeline.sweep import write_sweep_summary
from pipeline.training import (EarlyStopping, best_epoch, checkpoint_iterations, iterations_per_epoch,
                               split_digest, train, training_rows, validation_split)

# [paths] and [training] hold settings shared by every task; luigi warns that it prefers a
# section per task. One section per setting is what we want.
warnings.filterwarnings(
    "ignore", message=r"The use of the configuration \[(paths|training)\]", category=DeprecationWarning)

logger = logs.logger
logs.install()
COMMAND = os.urandom(8).hex()  # this command (its forked workers share it): a record made under it "ran"


_looks = []  # while a look is open: what was read of records, and the verdicts, by key


@contextlib.contextmanager
def one_look():
    """Within the block, each record is read and each task judged once (a status pass)."""
    outer = not _looks
    if outer:
        _looks.append({})
    try:
        yield
    finally:
        if outer:
            _looks.clear()


def _memoized(key, owner, compute):
    """compute(), once per key while a look is open; every time otherwise."""
    if not _looks:
        return compute()
    memo = _looks[0]
    if key not in memo:
        memo[key] = (owner, compute())  # the owner kept alive: its id is not reused meanwhile
    return memo[key][1]


class Output(luigi.Target):
    """A task's output: the local path it is made at and the location it stands for (the
    same on a disk; an s3 location with a bucket root)."""

    def __init__(self, root, path):
        self.root, self.path = root, Path(path)
        self.location = root.where(self.path)

    def exists(self):
        return storage.exists(self.location)


class PipelineTask(DataParameters, luigi.Task):
    """What every stage shares: the dataset and where its files live and come from.

    Complete means the task's lineage record vouches for its outputs and for the records of
    its inputs, and every task upstream is complete too. Only `dataset` identifies the data;
    the rest says where to find it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sources()  # [sources] in luigi.cfg is checked now, before anything runs
        workers = luigi.interface.core().workers
        if not (isinstance(workers, int) and workers >= 1):  # luigi's own flag: 0 would run nothing, silently
            raise ParameterError(f"invalid workers={workers}: must be a whole number >= 1")
        for name in ("timeout", "retries"):  # checked like [sources]' own values
            if getattr(self, name) is not None:
                getattr(sources, name).normalize(getattr(self, name))

    @functools.cached_property
    def data_root(self):
        return storage.Root(self.data_dir, self.cache_dir, "data")

    def root(self):
        """The root this task's outputs, record and lock live in."""
        return self.data_root

    def roots(self):
        return [self.data_root]

    # --- trust ---

    def complete(self):
        return self.stale_reason() is None

    def stale_reason(self):
        """None when complete; otherwise why the task would run ("missing", "input changed: ...")."""
        with one_look():
            return _memoized(("verdict", id(self)), self, self.find_stale_reason)

    def find_stale_reason(self):
        for requirement in luigi.task.flatten(self.requires()):
            reason = requirement.stale_reason()
            if reason is not None:
                return f"{requirement.get_task_family()} would run ({reason})"
        record = self.record()
        return lineage.problem(self.record_location(), self.record_inputs(), record=record) if record else \
            lineage.problem(self.record_location())

    def record_location(self):
        """The task's lineage record: <directory of its output>/lineage/<Task>.json."""
        return self.root().where(self.output().path.parent / "lineage" / f"{self.get_task_family()}.json")

    def recorded_outputs(self):
        """{label: (location, entry)} of the outputs as this task's record holds them ({} without one)."""
        record = self.record()
        return lineage.files(self.record_location(), record) if record else {}

    def record(self):
        location = self.record_location()
        return _memoized(("record", location), self, lambda: lineage.read_record(location))

    def record_inputs(self):
        """{label: (location, entry)} of the files the outputs are made from, as their records hold them."""
        return {}

    def reads(self):
        """{label: (location, entry)} of the files make() reads: made local, verified, before it runs."""
        return self.record_inputs()

    # --- making ---

    def run(self):
        """Make the outputs once: processes running this same task take turns on a lease (in the
        bucket with one) and the later ones find the work done. Each output is published (a no-op
        on a disk) while the lease is held, then the record that vouches for them, last."""
        with self.lock() as lease, one_look():  # each upstream record read once while making
            self.make_under(lease)

    def make_under(self, lease):
        """run() once the lease is held."""
        if self.complete():
            logger.info("%s: made by another process meanwhile", self.task_id)
            return
        for leftover in self.leftovers():  # only this task writes them, and we hold its lease
            logger.info("removing %s, left by an interrupted run", leftover)
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        storage.delete(self.record_location(), lease=lease)  # no record vouches for a half-made output
        for memo in _looks:  # nor does what was read of it before
            memo.pop(("record", self.record_location()), None)
            memo.pop(("verdict", id(self)), None)
        self.root().mark()
        inputs = self.record_inputs()
        for location, entry in self.reads().values():
            for root in self.roots():
                root.pull(location, entry)
        self.lease, started = lease, time.perf_counter()
        made = self.make()
        outputs = {label: (self.root().where(path), lineage.describe(path, self.root().publish(path, lease)))
                   for label, path in made.items()}
        self.before_record(outputs)
        lineage.write_record(self.record_location(), outputs=outputs, inputs=inputs, lease=lease,
                             task_id=self.task_id, seconds=round(time.perf_counter() - started, 3),
                             command=COMMAND, **self.facts())

    def lock(self):
        """This task's lease, <root>/.locks/<lock_name()>: a lock file on a disk, an object in a
        bucket; released (and removed) when done."""
        return storage.Lease(storage.join(self.root().location, ".locks", self.lock_name()),
                             f"{socket.gethostname()}:{os.getpid()}", ttl_seconds=self.lease_seconds)

    def lock_name(self):
        """<Task>_<dataset>: unique among the tasks writing to this root (gc reads these names)."""
        return f"{self.get_task_family()}_{self.dataset}"

    def make(self):
        """Write the outputs; return {label: local path} of them."""
        raise NotImplementedError

    def before_record(self, outputs):
        """Called with the published outputs ({label: (location, entry)}), before the record."""

    def facts(self):
        """Facts the record holds beside the files."""
        return {}

    def leftovers(self):
        """Temporary files of an earlier, killed run of this task."""
        return temporaries_of(self.output().path)

    def on_failure(self, exception):
        return logs.user_message(exception) or super().on_failure(exception)

    def data_params(self):
        """The shared parameters, to pass to an upstream task unchanged."""
        return {name: getattr(self, name) for name, _ in PipelineTask.get_params()}


def _recorded(task, *labels):
    """{label: (location, entry)} of some outputs of an upstream task, as its record holds them."""
    found = task.recorded_outputs()
    return {label: found[label] for label in labels if label in found}


class DownloadDataset(PipelineTask):
    """The dataset's four IDX files, verified, in <data_dir>/raw/<dataset>/ with MANIFEST.json.
    A custom dataset's source files are recorded too: changed, they make it stale.

    luigi --module pipeline.tasks DownloadDataset --dataset fashion-mnist --local-scheduler
    """

    def output(self):
        return Output(self.data_root, self.data_root.path("raw", self.dataset, "MANIFEST.json"))

    def stale_reason(self):
        reason = super().stale_reason()
        if reason is None and known_train_size(self.dataset) is None:
            reason = lineage.source_problem((self.record() or {}).get("sources") or {}, self.source_dir)
        return reason

    def leftovers(self):
        return staging_directories(self.output().path.parent) + super().leftovers()

    def make(self):
        settings = sources()
        folder = self.output().path.parent
        manifest = fetch_dataset(
            self.dataset, folder, source_dir=self.source_dir,
            local_dirs=settings.local_dirs if self.local_dirs is None else self.local_dirs,
            mirrors=configured_mirrors(self.dataset) if self.mirrors is None else self.mirrors,
            checksums=self.checksums,
            timeout=settings.timeout if self.timeout is None else self.timeout,
            retries=settings.retries if self.retries is None else self.retries,
            progress=self.show_progress,
        )
        logger.info("%s: %d files verified (%s)", self.dataset, len(manifest["files"]), manifest["verified_with"])
        self.sources = {name: lineage.source_entry(entry["source"], entry["sha256"])
                        for name, entry in manifest["files"].items() if os.path.isfile(entry["source"])}
        return {**{entry["stored_as"]: folder / entry["stored_as"] for entry in manifest["files"].values()},
                "MANIFEST.json": self.output().path}

    def facts(self):
        return {"sources": self.sources}

    def show_progress(self, fraction, message):
        logger.info(message)
        self.set_status_message(message)
        self.set_progress_percentage(round(100 * fraction))


class _ProcessTask(PipelineTask):
    """A processed file made from the raw files that DownloadDataset's record vouches for."""

    kind = None  # "images" or "labels"

    def requires(self):
        return DownloadDataset(**self.data_params())

    def output(self):
        return Output(self.data_root, self.data_root.path("processed", self.dataset, f"{self.kind}.h5"))

    def record_inputs(self):  # the raw files' bytes, not where they came from: MANIFEST.json aside
        return {label: entry for label, entry in self.reads().items() if label != "MANIFEST.json"}

    def reads(self):
        return self.requires().recorded_outputs()

    def make(self):
        arrays, checksums = load_raw_dataset(self.input().path.parent, self.kind)
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
                               dataset=self.dataset, source_sha256=checksums, framing=self.chosen_framing())

    def chosen_framing(self):
        return default_framing(self.dataset) if self.framing == "auto" else self.framing

    def stale_reason(self):
        reason = super().stale_reason()
        framing = (self.record() or {}).get("framing")
        if reason is None and framing != self.chosen_framing():
            reason = f"made for the framing {framing}, not {self.chosen_framing()}"
        return reason

    def facts(self):
        return {"framing": self.chosen_framing()}


class EncodeLabels(_ProcessTask):
    """Labels one-hot (n, 10) and as integers: <data_dir>/processed/<dataset>/labels.h5.

    luigi --module pipeline.tasks EncodeLabels --dataset fashion-mnist --local-scheduler
    """

    kind = "labels"

    def write(self, path, train, test, checksums):
        processed.write_labels(path, train, test, processed.one_hot(train), processed.one_hot(test),
                               dataset=self.dataset, source_sha256=checksums)


class RunTask(RunParameters, PipelineTask):
    """The parameters of one training run: all but the plumbing change the result, so they
    name the run directory (runs.run_name)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.patience and not self.validation_size:
            raise ParameterError(f"invalid patience={self.patience}: early stopping needs a validation split; "
                                 f"give --validation-size too, or --patience 0")
        train_size = known_train_size(self.dataset)
        if train_size is None and self.source_dir:
            train_size = peek_train_size(self.source_dir)
        if train_size is not None:
            check_fits_data(self.batch_size, self.iterations, train_size, self.validation_size)

    @functools.cached_property
    def artifacts_root(self):
        return storage.Root(self.artifacts_dir, self.cache_dir, "artifacts")

    def root(self):
        return self.artifacts_root

    def roots(self):
        return [self.data_root, self.artifacts_root]

    def run(self):
        self.set_status_message(f"run {self.run_id}")  # luigid's pages show it: runs told apart at a glance
        with threadpool_limits(self.blas_threads, user_api="blas"):
            super().run()

    def run_params(self):
        """The shared and run parameters, to pass to an upstream run task unchanged."""
        return {name: getattr(self, name) for name, _ in RunTask.get_params()}

    def hyperparameters(self):
        """Every parameter that changes the result of the run (and so names its directory)."""
        return runs.identity({name: getattr(self, name) for name, _ in RunTask.get_params()})

    @property
    def run_id(self):
        return runs.run_name(self.hyperparameters())

    def lock_name(self):
        return runs.lock_name(self.get_task_family(), self.dataset, self.run_id)

    @property
    def run_dir(self):
        """The run's local working directory (the run directory itself on a disk)."""
        return self.artifacts_root.path(self.dataset, self.run_id)

    @property
    def run_location(self):
        """The run directory's location, as users see it."""
        return self.artifacts_root.where(self.run_dir)

    def data_requirements(self):
        return {"images": NormalizeImages(**self.data_params()), "labels": EncodeLabels(**self.data_params())}

    def data_inputs(self):
        requirements = self.data_requirements()
        return {**_recorded(requirements["images"], "images.h5"), **_recorded(requirements["labels"], "labels.h5")}

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
        return Output(self.artifacts_root, self.run_dir / "gradient_check.json")

    def record_inputs(self):
        return self.data_inputs()

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
    """Mini-batch SGD with one HDF5 checkpoint per epoch, each evaluated on a second thread and
    recorded (its digest) as it is saved; resumes from the unbroken run of checkpoints that
    match their records. model.h5: the final weights and every epoch's figures.

    luigi --module pipeline.tasks TrainNetwork --dataset fashion-mnist --local-scheduler
    """

    def requires(self):
        return {"gradient_check": CheckGradient(**self.run_params()), **self.data_requirements()}

    def output(self):
        return Output(self.artifacts_root, self.run_dir / "model.h5")

    def record_inputs(self):
        return {**self.data_inputs(), **_recorded(self.requires()["gradient_check"], "gradient_check.json")}

    def leftovers(self):
        return (super().leftovers() + temporaries_of(self.run_dir / "checkpoints" / "iter-*.h5")
                + temporaries_of(self.run_dir / "best.h5"))

    def checkpoint_record(self, path):
        return lineage.checkpoint_record(storage.parent(self.record_location()), path.name)

    def trusted(self, path):
        """None when the checkpoint at path matches the record written when it was saved (and is
        then here, verified, on this machine); otherwise why not."""
        location = self.artifacts_root.where(path)
        try:
            entry = json.loads(storage.read_bytes(self.checkpoint_record(path)))
        except FileNotFoundError:
            return checkpoint.ABSENT if not storage.exists(location) else \
                "it has no record of its own (it was not saved whole, or not by this pipeline)"
        except ValueError:
            return "its record is not one"
        problem = lineage.mismatch(location, entry)
        if problem:
            return f"its bytes are {problem} since it was saved"
        try:
            self.artifacts_root.pull(location, entry)
        except PipelineError:
            return "its bytes are changed or damaged since it was saved"
        return None

    def make(self):
        images, labels = self.load_data()
        x_train, t_train = images["train"], labels["train_labels"]
        n_classes = labels["train_one_hot"].shape[1]
        check_fits_data(self.batch_size, self.iterations, x_train.shape[0], self.validation_size)
        inputs = {label: entry["sha256"] for label, (_, entry) in self.record_inputs().items()}
        held_out, train_rows, split = self.split(t_train)
        if split:  # a checkpoint trained beside other held-out images is not resumed from
            inputs["validation_split"] = split["validation_split_sha256"]
        train_size = x_train.shape[0] if train_rows is None else len(train_rows)
        per_epoch = iterations_per_epoch(train_size, self.batch_size)
        iterations = checkpoint_iterations(train_size, self.batch_size, self.iterations)
        folder = self.run_dir / "checkpoints"
        kept = checkpoint.valid_prefix(folder, iterations, self.run_id, inputs, trusted=self.trusted,
                                       where=self.artifacts_root.where)
        network, rng, start, losses = self.start_from(kept, x_train.shape[1], n_classes)
        save = dict(hyperparameters=self.hyperparameters(), dataset=self.dataset, run_id=self.run_id, inputs=inputs,
                    data_checksums=images["attrs"].get("source_sha256", {}), per_epoch=per_epoch)
        attrs = {**(split or {}), "framing": self.framing_of(images)}  # a checkpoint says how pictures fit it

        def on_checkpoint(iteration, losses_so_far):
            path = checkpoint.checkpoint_path(folder, iteration)
            checkpoint.save_checkpoint(path, params=network.params, iteration=iteration, epoch=iteration / per_epoch,
                                       losses=losses_so_far, rng_state=rng.bit_generator.state, attrs=attrs, **save)
            entry = lineage.describe(path, self.artifacts_root.publish(path, self.lease))
            storage.write_bytes(self.checkpoint_record(path), json.dumps(entry), lease=self.lease)
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
                           losses=losses, on_checkpoint=on_checkpoint, train_rows=train_rows,
                           should_stop=should_stop if self.patience else None)
            rows = evaluator.results()
        trained_to = len(losses)  # self.iterations unless stopped early
        outputs, model_attrs = {"model.h5": self.output().path}, dict(attrs)
        if split:
            stopper.observe(rows)
            logger.info("%s: %s", self.run_id, stopper.reason())
            model_attrs.update(best_iteration=stopper.best["iteration"], best_epoch=stopper.best["epoch"],
                               best_validation_accuracy=stopper.best["validation_accuracy"],
                               stopped_early=stopper.stopped, stop_reason=stopper.reason())
            best = self.run_dir / "best.h5"  # the checkpoint of the best validation accuracy, kept whatever keep_last
            with atomic_path(best) as temporary:
                shutil.copyfile(checkpoint.checkpoint_path(folder, stopper.best["iteration"]), temporary)
            outputs["best.h5"] = best
        checkpoint.save_checkpoint(self.output().path, params=network.params, iteration=trained_to,
                                   epoch=trained_to / per_epoch, losses=losses, rng_state=rng.bit_generator.state,
                                   evaluation=rows, attrs=model_attrs, **save)
        iterations = [i for i in iterations if i <= trained_to]
        kept = checkpoint.kept_checkpoints(iterations, per_epoch, self.keep_last, self.keep_every)
        for iteration in iterations:
            if iteration not in kept:  # on the disk and in the bucket alike
                path = checkpoint.checkpoint_path(folder, iteration)
                self.artifacts_root.delete(path, self.lease)
                storage.delete(self.checkpoint_record(path), lease=self.lease)
        return {**outputs, **{f"checkpoints/{p.name}": p for p in (checkpoint.checkpoint_path(folder, i) for i in kept)}}

    def framing_of(self, images):
        """How pictures are made into this model's inputs: as its dataset's images were framed."""
        return images["attrs"].get("framing") or default_framing(self.dataset)

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

    def facts(self):
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
        logger.info("%s: resuming training from iteration %d (%s)", self.run_id, last.iteration,
                    self.artifacts_root.where(last.path))
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


class EvaluateNetwork(RunTask):
    """The run's report: per-epoch accuracy and loss on the whole training and test sets, the
    final model's confusion matrix, and the run's row in the runs index (runs.csv); complete
    only once that row is there.

    luigi --module pipeline.tasks EvaluateNetwork --dataset fashion-mnist --local-scheduler
    """

    def requires(self):
        return {"model": TrainNetwork(**self.run_params()), **self.data_requirements()}

    def output(self):
        return Output(self.artifacts_root, self.run_dir / "report" / "report.json")

    def record_location(self):
        return self.artifacts_root.where(self.run_dir / "lineage" / "EvaluateNetwork.json")

    def record_inputs(self):
        return {**_recorded(self.requires()["model"], "model.h5"), **self.data_inputs()}

    def stale_reason(self):
        reason = super().stale_reason()
        if reason is None:
            expected = (self.record() or {}).get("runs_row") or {}
            row = runs.find_run(self.artifacts_dir, self.run_id) or {}
            if not expected or any(row.get(key) != value for key, value in expected.items()):
                reason = f"the runs index in {self.artifacts_dir} lacks the run's row or disagrees with its report"
        return reason

    def leftovers(self):
        return super().leftovers() + temporaries_of(self.run_dir / "report" / "*")

    def make(self):
        started = time.perf_counter()
        model = checkpoint.load_checkpoint(self.input()["model"].path)
        images, labels = self.load_data(("test",))
        n_classes = model.params["b2"].size
        rows = model.evaluation or []
        test_accuracy, _, predictions, probabilities = evaluate(model.params, images["test"], labels["test_labels"],
                                                                probabilities=True)
        if not rows or rows[-1]["iteration"] != model.iteration or rows[-1]["test_accuracy"] != test_accuracy:
            raise PipelineError(f"{self.input()['model'].location}: its figures do not match its weights (final "
                                f"test accuracy {test_accuracy:.4f} recomputed); delete it and rerun to train it again")
        upstream = (DownloadDataset(**self.data_params()), *self.data_requirements().values(),
                    CheckGradient(**self.run_params()), self.requires()["model"])
        records = {task.get_task_family(): lineage.read_record(task.record_location()) or {} for task in upstream}
        stages = [{"task": name, "state": "ran" if record.get("command") == COMMAND else "cached",
                   "seconds": record.get("seconds"), "finished_at": record.get("created_at")}
                  for name, record in records.items()]
        gradient_check = CheckGradient(**self.run_params()).output().location
        built = report.build_report(
            run_id=self.run_id, dataset=self.dataset, hyperparameters=self.hyperparameters(), epochs=rows,
            confusion=confusion_matrix(labels["test_labels"], predictions, n_classes),
            minibatch_losses=model.losses, gradient_check=json.loads(storage.read_bytes(gradient_check)),
            digests={"data": {label: entry["sha256"] for label, (_, entry) in self.data_inputs().items()},
                     "model": self.record_inputs()["model.h5"][1]["sha256"]},
            checkpoints=[{"file": Path(label).name, "iteration": checkpoint.iteration_of(label),
                          "sha256": entry["sha256"]} for label, entry in records["TrainNetwork"].get("outputs", {}).items()
                         if label.startswith("checkpoints/")],
            mistakes=report.confident_mistakes(probabilities, labels["test_labels"], images["test"]),
            stages=[*stages, {"task": "EvaluateNetwork", "state": "ran", "finished_at": _utc_now(),
                              "seconds": round(time.perf_counter() - started, 3)}],
            created_at=_utc_now())
        built["canary"] = canary.check(self.artifacts_dir, self.run_id, self.hyperparameters(), model.params,
                                       built["digests"]["data"], logger)
        files = report.write_report(self.run_dir / "report", built)
        logger.info("%s: final test accuracy %.4f, report in %s", self.run_id, rows[-1]["test_accuracy"],
                    self.artifacts_root.where(self.run_dir / "report"))
        return files

    def before_record(self, outputs):
        built = json.loads(self.output().path.read_text())
        final = built["final"]
        row = {"run_id": self.run_id, **self.hyperparameters(), "train_accuracy": final["train_accuracy"],
               "test_accuracy": final["test_accuracy"], "report_sha256": outputs["report.json"][1]["sha256"]}
        best = best_epoch(built["epochs"])
        if best:  # the epoch a validation split chooses, and its test accuracy
            row.update(best_validation_accuracy=best["validation_accuracy"], best_epoch=best["epoch"],
                       test_accuracy_at_best_epoch=best["test_accuracy"])
        runs.add_run(self.artifacts_dir, row, lease_seconds=self.lease_seconds)
        self.runs_row = {key: str(value) for key, value in row.items() if key in runs.RUN_COLUMNS}

    def facts(self):
        return {"runs_row": self.runs_row}


def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Sweep(SweepParameters, RunTask):
    """Train and evaluate every combination of hidden sizes, learning rates, batch sizes and
    seeds, then compare them; with --workers N independent runs train in parallel.

    luigi --module pipeline.tasks Sweep --dataset fashion-mnist --hidden-sizes '[50,100]' \\
          --learning-rates '[0.1,0.5]' --workers 2 --local-scheduler
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sizes = [len(set(values or [None])) for values in (self.hidden_sizes, self.learning_rates, self.batch_sizes,
                                                           self.seeds)]
        if int(np.prod(sizes)) > self.max_sweep_runs:
            raise ParameterError(f"the sweep has {' x '.join(map(str, sizes))} = {int(np.prod(sizes))} runs, more than "
                                 f"[training] max_sweep_runs = {self.max_sweep_runs}: shorten the lists or raise it")
        train_size = known_train_size(self.dataset)
        if train_size is None and self.source_dir:
            train_size = peek_train_size(self.source_dir)
        for combination in self.combinations():
            if train_size is not None:
                check_fits_data(combination["batch_size"], combination["iterations"], train_size,
                                combination["validation_size"])

    def combinations(self):
        """The run parameters of every run in the sweep, in a fixed order, each once."""
        base = self.run_params()
        lists = [list(dict.fromkeys(values or [default])) for values, default in (
            (self.hidden_sizes, self.hidden_size), (self.learning_rates, self.learning_rate),
            (self.batch_sizes, self.batch_size), (self.seeds, self.seed))]
        return [{**base, "hidden_size": h, "learning_rate": lr, "batch_size": b, "seed": s}
                for h, lr, b, s in itertools.product(*lists)]

    @property
    def sweep_id(self):
        return runs.sweep_name(task.run_id for task in self.requires())

    def lock_name(self):
        return runs.lock_name("Sweep", self.dataset, self.sweep_id)

    def requires(self):
        return [EvaluateNetwork(**combination) for combination in self.combinations()]

    def output(self):
        return Output(self.artifacts_root, self.artifacts_root.path(self.dataset, "sweeps", self.sweep_id,
                                                                    "summary.csv"))

    def record_inputs(self):
        return {task.run_id: entry for task in self.requires()
                for label, entry in task.recorded_outputs().items() if label == "report.json"}

    def make(self):
        reports = [report.read_report(target.path.parent) for target in self.input()]
        rows, files = write_sweep_summary(self.output().path.parent, self.sweep_id, reports)
        if self.validation_size:
            logger.info("%s: %d runs; best by validation %s (epoch %.4g, validation accuracy %.4f), its test "
                        "accuracy there %.4f", self.sweep_id, len(rows), rows[0]["run_id"], rows[0]["best_epoch"],
                        rows[0]["best_validation_accuracy"], rows[0]["test_accuracy_at_best_epoch"])
        else:
            logger.info("%s: %d runs; best %s with test accuracy %.4f", self.sweep_id, len(rows),
                        rows[0]["run_id"], rows[0]["final_test_accuracy"])
        return files

    def before_record(self, outputs):
        runs.write_index(self.artifacts_dir, lease_seconds=self.lease_seconds)  # the index lists the sweep now
