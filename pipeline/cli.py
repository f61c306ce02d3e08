"""The mnist-pipeline command: run the whole chain, inspect artifacts, predict with a model.

    mnist-pipeline run --dataset fashion-mnist
    mnist-pipeline inspect                      # every run
    mnist-pipeline inspect artifacts/fashion-mnist/h50-b100-lr0.1-s0-1a2b3c4d
    mnist-pipeline inspect artifacts/.../model.h5
    mnist-pipeline predict artifacts/.../model.h5 t10k-images-idx3-ubyte.gz [t10k-labels-idx1-ubyte.gz]

Errors the pipeline expects (a missing file, a damaged checkpoint, a bad parameter) are
printed as one line, "mnist-pipeline: error: ...", with a non-zero exit code.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from pipeline import checkpoint, report
from pipeline.errors import CheckpointError, PipelineError
from pipeline.idx import read_idx
from pipeline.network import TwoLayerNet
from pipeline.preprocess import normalize_images

EXIT_USAGE = 2  # argparse's code for a bad command line; bad parameters count as one


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except PipelineError as error:
        print(f"mnist-pipeline: error: {error}", file=sys.stderr)
        return EXIT_USAGE if args.command == "run" else 1
    except KeyboardInterrupt:
        print("mnist-pipeline: interrupted", file=sys.stderr)
        return 130


def build_parser():
    parser = argparse.ArgumentParser(prog="mnist-pipeline", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train and evaluate (builds EvaluateNetwork and all it needs)")
    from pipeline import tasks  # luigi is imported only where the chain is run

    for name, kind, description in tasks.parameter_descriptions():
        run.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=description)
    run.add_argument("--workers", type=int, default=1, help="Luigi worker processes")
    run.add_argument("--scheduler-url", default=None,
                     help="a central luigid (e.g. http://localhost:8082); the local scheduler by default")
    run.set_defaults(handler=run_command)

    inspect = commands.add_parser("inspect", help="list runs, or show one run directory or .h5 file")
    inspect.add_argument("path", nargs="?", help="a run directory or an .h5 file; nothing for all runs")
    inspect.add_argument("--artifacts-dir", default="artifacts", help="where runs.csv is (default: artifacts)")
    inspect.set_defaults(handler=inspect_command)

    predict = commands.add_parser("predict", help="predict the labels of an IDX images file")
    predict.add_argument("model", help="a checkpoint .h5 file or a run directory (its model.h5)")
    predict.add_argument("images", help="IDX images file, gzipped or not")
    predict.add_argument("labels", nargs="?", help="IDX labels file: also print the accuracy")
    predict.add_argument("--summary", action="store_true", help="print only the counts (and accuracy)")
    predict.set_defaults(handler=predict_command)
    return parser


# --- run ---

def run_command(args):
    from pipeline import tasks

    given = {name: getattr(args, name) for name, _, _ in tasks.parameter_descriptions()
             if getattr(args, name) is not None}
    target = tasks.EvaluateNetwork(**given)  # raises ParameterError for bad values, before any work
    status, failures = tasks.build([target], workers=args.workers, scheduler_url=args.scheduler_url)
    code = tasks.exit_code(status)
    if code:
        for task, message in failures:
            print(f"mnist-pipeline: error: {task.get_task_family()} failed: {message}", file=sys.stderr)
        print(f"mnist-pipeline: the run did not finish ({status.name}); exit code {code}", file=sys.stderr)
        return code
    metrics = json.loads(Path(target.output().path).read_text())
    final = metrics["final"]
    print(f"run:    {target.run_dir}")
    print(f"report: {target.run_dir / 'report' / 'report.md'}")
    print(f"final train accuracy {final['train_accuracy']:.4f}, test accuracy {final['test_accuracy']:.4f} "
          f"after {final['iteration']} iterations")
    return 0


# --- inspect ---

def inspect_command(args):
    if args.path is None:
        return show_runs(Path(args.artifacts_dir) / "runs.csv")
    path = Path(args.path)
    if not path.exists():
        raise PipelineError(f"{path} does not exist: give a run directory or an .h5 file")
    if path.is_dir():
        return show_run(path)
    print(checkpoint.describe_h5(path))
    return 0


def show_runs(runs_csv):
    if not runs_csv.exists():
        raise PipelineError(f"no runs yet: {runs_csv} does not exist (run `mnist-pipeline run` first)")
    rows = report.read_runs(runs_csv)
    columns = ["run_id", "dataset", "hidden_size", "batch_size", "learning_rate", "iterations", "seed",
               "train_accuracy", "test_accuracy", "finished_at"]
    print_table(columns, [[_short(row.get(c, "")) for c in columns] for row in rows])
    return 0


def show_run(run_dir):
    params_file = run_dir / "params.json"
    if not params_file.exists():
        raise PipelineError(f"{run_dir} is not a run directory (it has no params.json)")
    params = json.loads(params_file.read_text())
    print(f"run {run_dir}")
    for key, value in params.items():
        print(f"  {key}: {value}")

    paths = checkpoint.list_checkpoints(run_dir / "checkpoints")
    print(f"\ncheckpoints ({len(paths)}):")
    rows = []
    for path in paths:
        try:
            c = checkpoint.load_checkpoint(path)
            rows.append([path.name, c.iteration, f"{c.epoch:.2f}", f"{c.loss:.4f}", c.created_at])
        except CheckpointError as error:
            rows.append([path.name, "damaged", "", "", str(error)])
    print_table(["file", "iteration", "epoch", "loss", "created_at"], rows)

    accuracy_csv = run_dir / "report" / "accuracy.csv"
    if not (run_dir / "report" / "metrics.json").exists() or not accuracy_csv.exists():
        raise PipelineError(f"the run in {run_dir} has not finished: it has no report yet "
                            f"(rerun the same `mnist-pipeline run` command to finish it)")
    with open(accuracy_csv, newline="") as f:
        epochs = list(csv.DictReader(f))
    print("\nper-epoch accuracy:")
    columns = ["epoch", "iteration", "train_accuracy", "test_accuracy", "train_loss", "test_loss"]
    print_table(columns, [[_short(row[c]) for c in columns] for row in epochs])
    return 0


def print_table(columns, rows):
    widths = [max([len(str(c))] + [len(str(r[i])) for r in rows]) for i, c in enumerate(columns)]
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))


def _short(value):
    """Floats with four decimals for tables; everything else as it is."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return value if float(number).is_integer() and "." not in str(value) else f"{number:.4f}"


# --- predict ---

def predict_command(args):
    model = Path(args.model)
    if model.is_dir():
        model = model / "model.h5"
        if not model.exists():
            raise PipelineError(f"{model} does not exist: the run has not finished training")
    network = TwoLayerNet.from_params(checkpoint.load_checkpoint(model).params)
    images = read_idx(args.images)
    if images.ndim != 3:
        raise PipelineError(f"{args.images} holds labels, not images: give the images file first")
    x = normalize_images(images).astype(network.dtype, copy=False)
    if x.shape[1] != network.params["W1"].shape[0]:
        raise PipelineError(f"{args.images} has images of {x.shape[1]} pixels; the model takes "
                            f"{network.params['W1'].shape[0]}")
    predicted = np.argmax(network.predict(x), axis=1)
    if not args.summary:
        sys.stdout.write("".join(f"{label}\n" for label in predicted))
    counts = np.bincount(predicted, minlength=10)
    print(f"predicted {len(predicted)} images; per class: {counts.tolist()}", file=sys.stderr)
    if args.labels:
        labels = read_idx(args.labels)
        if labels.shape[0] != predicted.shape[0]:
            raise PipelineError(f"{args.labels} holds {labels.shape[0]} labels for {predicted.shape[0]} images")
        correct = int(np.count_nonzero(predicted == labels))
        print(f"accuracy {correct / len(labels):.4f} ({correct}/{len(labels)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
