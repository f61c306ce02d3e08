"""mnist-pipeline run / inspect / predict, as a person at a shell uses them."""

import json
import shutil

import pytest

from fakedata import FILES, make_idx_dataset
from pipeline.cli import main
from runner import run, workspace

pytestmark = pytest.mark.slow

SMALL = ["--hidden-size", "24", "--batch-size", "50", "--learning-rate", "0.5", "--iterations", "120",
         "--sampling", "shuffle"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_source):
    """A workspace with one finished run, made by `mnist-pipeline run` itself."""
    workdir = workspace(tmp_path_factory.mktemp("cli"))
    done = run(["run", "--dataset", "synthetic", "--source-dir", str(synthetic_source), "--data-dir", "data",
               "--artifacts-dir", "artifacts", *SMALL], workdir, tool="cli")
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (workdir / "artifacts" / "synthetic").glob("h24-*")
    return workdir, run_dir, done


def test_run_prints_where_the_report_is_and_the_final_accuracies(finished):
    workdir, run_dir, done = finished
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert f"report: artifacts/synthetic/{run_dir.name}/report/report.md" in done.stdout
    assert f"test accuracy {metrics['final']['test_accuracy']:.4f}" in done.stdout
    assert metrics["final"]["test_accuracy"] >= 0.9


def test_a_second_run_does_nothing_and_succeeds(finished, synthetic_source):
    workdir, run_dir, _ = finished
    stamp = (run_dir / "report" / "metrics.json").stat().st_mtime_ns
    again = run(["run", "--dataset", "synthetic", "--source-dir", str(synthetic_source), "--data-dir", "data",
                "--artifacts-dir", "artifacts", *SMALL], workdir, tool="cli")
    assert again.returncode == 0
    assert "training from iteration 0" not in again.stderr
    assert (run_dir / "report" / "metrics.json").stat().st_mtime_ns == stamp


def test_a_failing_run_exits_with_the_shipped_task_failed_code_and_a_one_line_reason(tmp_path):
    workspace(tmp_path)
    (tmp_path / "empty").mkdir()
    done = run(["run", "--dataset", "synthetic", "--source-dir", str(tmp_path / "empty"), *SMALL], tmp_path, tool="cli")
    assert done.returncode == 30
    assert "mnist-pipeline: error: DownloadDataset failed: DownloadError: could not get a verified train-images-idx3-ubyte.gz" \
        in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("flags, message", [
    (["--hidden-size", "0"], "invalid hidden_size=0"),
    (["--learning-rate", "-1"], "invalid learning_rate=-1"),
    (["--dataset", "../etc"], "invalid dataset='../etc'"),
    (["--date", "yesterday"], "invalid date=yesterday"),
    (["--seed", "-1"], "invalid seed=-1"),
    (["--timeout", "0"], "invalid timeout=0"),
])
def test_bad_parameters_are_one_line_errors_before_anything_is_written(tmp_path, flags, message):
    workspace(tmp_path)
    done = run(["run", *flags], tmp_path, tool="cli")
    assert done.returncode == 2
    assert done.stderr.strip() == f"mnist-pipeline: error: {done.stderr.strip().split('error: ', 1)[1]}"
    assert message in done.stderr and "Traceback" not in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["luigi.cfg"]


def test_inspect_lists_all_runs(finished, capsys):
    workdir, run_dir, _ = finished
    assert main(["inspect", "--artifacts-dir", str(workdir / "artifacts")]) == 0
    out = capsys.readouterr().out
    assert run_dir.name in out and "test_accuracy" in out.splitlines()[0]


def test_inspect_a_run_shows_parameters_checkpoints_and_the_epoch_table(finished, capsys):
    _, run_dir, _ = finished
    assert main(["inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "hidden_size: 24" in out and "iter-00000120.h5" in out and "per-epoch accuracy" in out
    assert len([line for line in out.splitlines() if line.startswith("iter-")]) == 11  # 0, 12, ..., 120


def test_inspect_an_h5_file_lists_its_layout(finished, capsys):
    _, run_dir, _ = finished
    assert main(["inspect", str(run_dir / "model.h5")]) == 0
    out = capsys.readouterr().out
    assert "W1  dataset (784, 24) float32" in out and "@iteration = 120" in out


def test_inspect_errors_are_clear(tmp_path, finished, capsys):
    _, run_dir, _ = finished
    (tmp_path / "notes.h5").write_text("not hdf5")
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "iter-00000012.h5", unfinished / "checkpoints")
    cases = [
        ([str(tmp_path / "missing")], "does not exist", 2),
        ([str(tmp_path / "notes.h5")], "is not an HDF5 file", 1),
        ([str(tmp_path)], "is not a run directory", 1),
        ([str(unfinished)], "has no report to trust (missing)", 1),
        (["--artifacts-dir", str(tmp_path / "none")], "no runs yet", 1),
    ]
    for args, message, code in cases:
        assert main(["inspect", *args]) == code
        err = capsys.readouterr().err
        assert message in err and err.startswith("mnist-pipeline: error:")


def test_predict_prints_labels_and_the_accuracy(finished, synthetic_source):
    workdir, run_dir, _ = finished
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    done = run(["predict", str(run_dir), str(synthetic_source / FILES["test_images"]),
               str(synthetic_source / FILES["test_labels"])], workdir, tool="cli")
    assert done.returncode == 0, done.stderr
    labels = [line.split("\t")[1] for line in done.stdout.splitlines()]
    assert len(labels) == 200 and set(labels) <= set("0123456789")
    correct = round(metrics["final"]["test_accuracy"] * 200)
    assert f"accuracy {correct / 200:.4f} ({correct}/200)" in done.stderr


def test_predict_errors_are_clear(finished, synthetic_source, tmp_path, capsys):
    _, run_dir, _ = finished
    images = str(synthetic_source / FILES["test_images"])
    make_idx_dataset(tmp_path / "other", n_train=20, n_test=7)
    swapped = tmp_path / "swapped"
    shutil.copytree(run_dir, swapped)
    shutil.copy(swapped / "checkpoints" / "iter-00000012.h5", swapped / "model.h5")
    cases = [
        ([str(swapped), images], "is not the run's trained model (changed or damaged", 30),
        ([str(tmp_path / "nope.h5"), images], "no such model file", 20),
        ([str(tmp_path), images], "is not the run's trained model (missing)", 30),
        ([str(run_dir), str(tmp_path / "missing.gz")], "no such file", 20),
        ([str(run_dir), str(synthetic_source / FILES["test_labels"])], "holds labels", 30),
        ([str(run_dir), images, str(tmp_path / "other" / FILES["test_labels"])], "holds 7 labels for 200 images", 30),
        ([str(run_dir), images, images], "holds images, not labels", 30),
    ]
    for args, message, code in cases:
        assert main(["predict", "--summary", *args]) == code
        assert message in capsys.readouterr().err


def test_predict_reads_ordinary_pictures_and_names_each_label(finished, tmp_path):
    from PIL import Image

    from fakedata import learnable_arrays

    workdir, run_dir, _ = finished
    arrays = learnable_arrays(n_train=0, n_test=3, seed=8)
    paths = []
    for k, (image, label) in enumerate(zip(arrays["test_images"], arrays["test_labels"])):
        path = tmp_path / f"drawn-{k}.png"
        Image.fromarray(255 - image).resize((112, 112)).save(path)  # dark on light, 4 times larger
        paths.append(str(path))
    done = run(["predict", str(run_dir), *paths], workdir, tool="cli")
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert [line[0] for line in lines] == paths
    assert all(line[1] in "0123456789" and line[2] == line[1] and 0 < float(line[3]) <= 1 for line in lines)


def test_diff_shows_the_parameters_that_differ_and_the_final_figures(finished, synthetic_source, capsys):
    workdir, run_dir, _ = finished
    other = run(["run", "--dataset", "synthetic", "--source-dir", str(synthetic_source), "--data-dir", "data",
                 "--artifacts-dir", "artifacts", *SMALL, "--seed", "1"], workdir, tool="cli")
    assert other.returncode == 0, other.stderr[-2000:]
    (other_dir,) = [p for p in (workdir / "artifacts" / "synthetic").glob("h24-*") if p != run_dir]
    assert main(["diff", str(run_dir), str(other_dir)]) == 0
    out = capsys.readouterr().out
    assert "seed" in out and "hidden_size" not in out.split("final figures")[0]
    report = json.loads((other_dir / "report" / "report.json").read_text())
    assert f"{report['final']['test_accuracy']:.4f}" in out


def test_an_unreachable_scheduler_is_a_one_line_error_at_once(tmp_path):
    workspace(tmp_path)
    done = run(["run", "--dataset", "synthetic", "--scheduler-host", "127.0.0.1", "--scheduler-port", "9"],
               tmp_path, tool="cli", timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("mnist-pipeline: error: PipelineError: cannot reach luigid at 127.0.0.1:9")
    assert len(done.stderr.strip().splitlines()) == 1


def test_help_shows_defaults_and_version_is_printed(tmp_path):
    workspace(tmp_path)
    helped = run(["run", "--help"], tmp_path, tool="cli")
    assert "Units in the hidden layer. (default: 50)" in " ".join(helped.stdout.split())
    version = run(["--version"], tmp_path, tool="cli")
    assert version.stdout.startswith("mnist-pipeline 0.")
