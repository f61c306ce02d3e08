"""What an operator relies on: the README's cron line, timestamped logs written once, dated
runs and backfills with Luigi's range tools, failure mail."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import luigi
import pytest

from runner import REPO, chain, run, workspace

pytestmark = pytest.mark.slow

FASHION = Path("/usr/share/datasets/fashion-mnist")


def readme_block(start):
    """The first line of a README code block that starts with `start`."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith(start):
            return line
    raise AssertionError(f"README has no line starting {start!r}")


def fresh_copy(path):
    """The repository's tracked files in `path`, as a new clone has them, with this venv as .venv."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, path / name)
    (path / ".venv").symlink_to(Path(sys.prefix))
    return path


def cron_command(copy, dataset=None):
    """The README's cron line without its schedule, for a shell: cron's \\% becomes %."""
    line = readme_block("15 2 * * *")
    command = line.split(None, 5)[5].replace("\\%", "%").replace("/srv/mnist-pipeline", str(copy))
    return command if dataset is None else command.replace("--dataset fashion-mnist", f"--dataset {dataset}")


@pytest.mark.realdata
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_the_readme_cron_line_runs_verbatim_in_a_fresh_copy_and_logs_with_timestamps(tmp_path):
    copy = fresh_copy(tmp_path / "clone")
    done = subprocess.run(["/bin/sh", "-c", cron_command(copy)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + (copy / "logs" / "nightly.log").read_text()[-3000:]
    log = (copy / "logs" / "nightly.log").read_text()
    stamped = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR|DEBUG): ")
    lines = [line for line in log.splitlines() if line.strip()]
    assert sum(bool(stamped.match(line)) for line in lines) > 20
    assert "final test accuracy" in log and "This progress looks :)" in log
    (report,) = (copy / "artifacts" / "fashion-mnist").glob("*/report/metrics.json")
    assert json.loads(report.read_text())["final"]["test_accuracy"] > 0.8

    failing = subprocess.run(["/bin/sh", "-c", cron_command(copy, dataset="no-such-data")], capture_output=True,
                             text=True, timeout=600)
    assert failing.returncode == 30
    log = (copy / "logs" / "nightly.log").read_text()
    assert "could not get a verified train-images-idx3-ubyte.gz" in log and "This progress looks :(" in log


def test_a_dated_run_trains_once_and_a_second_run_for_the_date_does_nothing(tmp_path, synthetic_source):
    workdir = workspace(tmp_path)
    first = run(chain(synthetic_source, "--date", "2026-11-22"), workdir)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir,) = Path(workdir, "artifacts", "synthetic").glob("*2026-11-22*")
    stamp = (run_dir / "report" / "report.json").stat().st_mtime_ns
    second = run(chain(synthetic_source, "--date", "2026-11-22"), workdir)
    assert second.returncode == 0 and "training from iteration 0" not in second.stderr
    assert (run_dir / "report" / "report.json").stat().st_mtime_ns == stamp


def test_a_range_backfill_trains_the_missing_dates_and_skips_the_done_one(tmp_path, synthetic_source):
    workdir = workspace(tmp_path)
    done = run(chain(synthetic_source, "--date", "2026-11-02"), workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    of_params = dict(zip(chain(synthetic_source)[4::2], chain(synthetic_source)[5::2]))
    of_params = {key.lstrip("-").replace("-", "_"): value for key, value in of_params.items()}
    for key in ("local_dirs", "mirrors"):
        of_params[key] = json.loads(of_params[key])
    backfill = run(["--module", "pipeline.tasks", "RangeDailyBase", "--of", "EvaluateNetwork", "--param-name", "date",
                    "--start", "2026-11-01", "--stop", "2026-11-04", "--of-params", json.dumps(of_params),
                    "--local-scheduler"], workdir)
    assert backfill.returncode == 0, backfill.stderr[-3000:]
    assert backfill.stderr.count("training from iteration 0") == 2
    dated = sorted(p.name.split("-s4-")[1][:10] for p in (workdir / "artifacts" / "synthetic").glob("h30-*"))
    assert dated == ["2026-11-01", "2026-11-02", "2026-11-03"]


def test_a_logging_config_file_with_a_root_handler_prints_each_pipeline_line_once(tmp_path, synthetic_source):
    workdir = workspace(tmp_path)
    config = (workdir / "luigi.cfg").read_text().replace("no_configure_logging = true",
                                                          "logging_conf_file = logging.cfg")
    (workdir / "luigi.cfg").write_text(config)
    (workdir / "logging.cfg").write_text(
        "[loggers]\nkeys = root\n[handlers]\nkeys = stderr\n[formatters]\nkeys = plain\n"
        "[logger_root]\nlevel = INFO\nhandlers = stderr\n"
        "[handler_stderr]\nclass = StreamHandler\nformatter = plain\nargs = (sys.stderr,)\n"
        "[formatter_plain]\nformat = %(asctime)s %(name)s %(levelname)s %(message)s\n")
    done = run(chain(synthetic_source), workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split(" ", 2)[2] for line in done.stderr.splitlines() if "luigi-interface.pipeline" in line]
    assert any("training from iteration 0" in line for line in lines)
    assert len(lines) == len(set(lines)), "a pipeline line was printed twice"


def test_a_failure_sends_luigis_failure_mail_with_the_one_line_reason(tmp_path, monkeypatch):
    from pipeline import tasks

    sent = []
    monkeypatch.setattr(luigi.notifications, "send_email", lambda subject, message, sender, recipients, **kw:
                        sent.append((subject, message, recipients)))
    config = luigi.configuration.get_config()
    config.add_section("email")
    try:
        config.set("email", "receiver", "ops@example.org")
        config.set("email", "force_send", "true")
        task = tasks.DownloadDataset(dataset="no-such-data", data_dir=str(tmp_path / "data"), local_dirs=[],
                                     mirrors=[])
        assert not luigi.build([task], local_scheduler=True)
    finally:
        config.remove_section("email")
    ((subject, message, recipients),) = sent
    assert "DownloadDataset(dataset=no-such-data) FAILED" in subject and list(recipients) == ["ops@example.org"]
    assert "DownloadError: no source for dataset 'no-such-data'" in message
    assert "Traceback" not in message  # the reason a reader can act on, not a stack
