"""Prometheus metrics of each command's outcome: the text format as Prometheus' own parser reads
it, what a success and a failure keep and replace, a textfile for node_exporter's collector
(damaged, concurrent), and a real Pushgateway on 127.0.0.1 receiving a run's metrics."""

import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import servers
from pipeline import metrics
from runner import chain, run, workspace

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
FIGURES = [{"run_id": "h30-a", "accuracy": {"train": 0.9, "test": 0.875}, "stage_seconds": {"TrainNetwork": 2.5},
            "reproducible": 1},
           {"run_id": "h30-b", "accuracy": {"train": 0.8, "test": 0.75}, "stage_seconds": {}, "reproducible": None}]


def samples(text):
    """{(name, sorted label items): value} as prometheus_client's parser reads the text."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found, name, **labels):
    matches = [v for (n, items), v in found.items() if n == name and set(labels.items()) <= set(items)]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def test_a_success_renders_every_figure_in_prometheus_text_format():
    new = metrics.series("sweep", "fashion-mnist", 0, started=100.0, finished=160.5, runs=FIGURES, run="sweep-1")
    found = samples(metrics.render(new))
    assert value(found, "mnist_pipeline_last_success_timestamp_seconds", command="sweep") == 160.5
    assert value(found, "mnist_pipeline_last_duration_seconds", dataset="fashion-mnist") == 60.5
    assert value(found, "mnist_pipeline_last_exit_code", reason="success", run="sweep-1") == 0
    assert value(found, "mnist_pipeline_accuracy", run="h30-a", split="test") == 0.875
    assert value(found, "mnist_pipeline_accuracy", run="h30-b", split="train") == 0.8
    assert value(found, "mnist_pipeline_stage_duration_seconds", run="h30-a", stage="TrainNetwork") == 2.5
    assert value(found, "mnist_pipeline_reproducible", run="h30-a") == 1
    assert not [k for k in found if k[0] == "mnist_pipeline_reproducible" and ("run", "h30-b") in k[1]]
    assert not [k for k in found if k[0] == "mnist_pipeline_last_failure_timestamp_seconds"]


def test_label_values_with_quotes_backslashes_and_newlines_survive_both_parsers():
    new = [("mnist_pipeline_accuracy", {"command": "run", "dataset": 'a"b\\c\nd', "run": "r", "split": "test"}, 0.5)]
    text = metrics.render(new)
    assert value(samples(text), "mnist_pipeline_accuracy", dataset='a"b\\c\nd') == 0.5
    assert metrics.parse(text) == new


def test_a_failure_keeps_the_last_success_and_its_figures(tmp_path):
    textfile = tmp_path / "mnist.prom"
    metrics.write_textfile(textfile, metrics.series("run", "mnist", 0, started=10, finished=20, runs=FIGURES[:1]))
    metrics.write_textfile(textfile, metrics.series("run", "mnist", 30, started=100, finished=130))
    found = samples(textfile.read_text())
    assert value(found, "mnist_pipeline_last_success_timestamp_seconds") == 20
    assert value(found, "mnist_pipeline_last_failure_timestamp_seconds") == 130
    assert value(found, "mnist_pipeline_last_exit_code") == 30
    assert value(found, "mnist_pipeline_last_duration_seconds") == 30
    assert value(found, "mnist_pipeline_accuracy", split="test") == 0.875  # the last success's
    # the next success replaces its figures (h30-a's go, h30-b's come) and keeps the failure's time
    metrics.write_textfile(textfile, metrics.series("run", "mnist", 0, started=200, finished=210, runs=FIGURES[1:]))
    found = samples(textfile.read_text())
    assert value(found, "mnist_pipeline_last_success_timestamp_seconds") == 210
    assert value(found, "mnist_pipeline_last_failure_timestamp_seconds") == 130
    assert [dict(k[1])["run"] for k in found if k[0] == "mnist_pipeline_accuracy"] == ["h30-b", "h30-b"]


def test_other_datasets_and_commands_keep_their_series(tmp_path):
    textfile = tmp_path / "mnist.prom"
    metrics.write_textfile(textfile, metrics.series("run", "mnist", 0, started=1, finished=2, runs=FIGURES[:1]))
    metrics.write_textfile(textfile, metrics.series("luigi", "mnist", 30, started=3, finished=4))
    metrics.write_textfile(textfile, metrics.series("run", "fashion-mnist", 20, started=5, finished=6))
    found = samples(textfile.read_text())
    assert value(found, "mnist_pipeline_last_success_timestamp_seconds", command="run", dataset="mnist") == 2
    assert value(found, "mnist_pipeline_last_failure_timestamp_seconds", command="luigi", dataset="mnist") == 4
    assert value(found, "mnist_pipeline_last_exit_code", command="run", dataset="fashion-mnist") == 20
    assert value(found, "mnist_pipeline_last_exit_code", command="run", dataset="mnist") == 0


def test_a_damaged_textfile_is_replaced_by_a_readable_one_keeping_what_it_can(tmp_path):
    textfile = tmp_path / "mnist.prom"
    textfile.write_bytes(b'mnist_pipeline_last_success_timestamp_seconds{command="run",dataset="mnist"} 42\n'
                         b'garbage {{{ \xff\xfe\nhalf_a_line{command="run"\nno_value{a="b"}\n')
    metrics.write_textfile(textfile, metrics.series("run", "mnist", 30, started=50, finished=60))
    found = samples(textfile.read_text())  # prometheus_client's parser would raise on any leftover
    assert value(found, "mnist_pipeline_last_success_timestamp_seconds") == 42
    assert value(found, "mnist_pipeline_last_failure_timestamp_seconds") == 60
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_concurrent_writers_lose_no_dataset(tmp_path):
    textfile = tmp_path / "mnist.prom"
    datasets = [f"set{i}" for i in range(12)]
    threads = [threading.Thread(target=metrics.write_textfile,
                                args=(textfile, metrics.series("run", d, 0, started=0, finished=1, runs=FIGURES)))
               for d in datasets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = samples(textfile.read_text())
    assert sorted(dict(k[1])["dataset"] for k in found if k[0] == "mnist_pipeline_last_success_timestamp_seconds") \
        == sorted(datasets)


def test_record_without_a_metrics_section_writes_nothing_and_an_unwritable_one_only_warns(tmp_path, caplog):
    assert metrics.record("run", "mnist", 0, started=0, config={"textfile": None, "pushgateway": None}) == []
    blocked = tmp_path / "file"
    blocked.write_text("")
    new = metrics.record("run", "mnist", 0, started=0,
                         config={"textfile": str(blocked / "x.prom"), "pushgateway": f"127.0.0.1:{servers.free_port()}"})
    assert new and "cannot write" in caplog.text and "cannot push" in caplog.text


@pytest.fixture
def pushgateway(tmp_path):
    """Debian's prometheus-pushgateway on a free 127.0.0.1 port: its address; stopped afterwards."""
    if not Path(PUSHGATEWAY).exists():
        pytest.skip("prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway)")
    address = f"127.0.0.1:{servers.free_port()}"
    with servers.serving([PUSHGATEWAY, f"--web.listen-address={address}",
                          f"--persistence.file={tmp_path / 'pushgateway.data'}"],
                         f"http://{address}/-/ready", "pushgateway"):
        yield address


def scrape(address):
    return urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()


def with_metrics_section(workdir, **settings):
    with open(workdir / "luigi.cfg", "a") as f:
        f.write("\n[metrics]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))


@pytest.mark.slow
def test_a_run_pushes_its_metrics_to_a_real_pushgateway_and_a_failure_keeps_the_success(
        tmp_path, pushgateway, synthetic_source):
    workdir = workspace(tmp_path / "w")
    with_metrics_section(workdir, pushgateway=pushgateway)
    before = time.time()
    done = run(["run", *chain(synthetic_source)[4:]], workdir, tool="cli")
    assert done.returncode == 0, done.stderr[-3000:]
    found = samples(scrape(pushgateway))
    group = {"job": "mnist_pipeline", "command": "run", "dataset": "synthetic"}
    success = value(found, "mnist_pipeline_last_success_timestamp_seconds", **group)
    assert before <= success <= time.time()
    test_accuracy = value(found, "mnist_pipeline_accuracy", split="test", **group)
    assert f"test accuracy {test_accuracy:.4f}" in done.stdout  # the figure the run printed
    (run_dir,) = (workdir / "artifacts" / "synthetic").glob("h30-*")
    assert value(found, "mnist_pipeline_stage_duration_seconds", stage="TrainNetwork", run=run_dir.name, **group) > 0
    assert value(found, "mnist_pipeline_last_exit_code", reason="success", **group) == 0

    empty = tmp_path / "empty"
    empty.mkdir()
    failed = run(["run", *chain(empty, "--data-dir", "other")[4:]], workdir, tool="cli")
    assert failed.returncode == 30
    found = samples(scrape(pushgateway))
    assert value(found, "mnist_pipeline_last_success_timestamp_seconds", **group) == success
    assert value(found, "mnist_pipeline_last_failure_timestamp_seconds", **group) > success
    assert value(found, "mnist_pipeline_last_exit_code", reason="task_failed", **group) == 30
    assert value(found, "mnist_pipeline_accuracy", split="test", **group) == test_accuracy


@pytest.mark.slow
def test_a_failing_cron_like_run_leaves_its_failure_time_and_reason_in_the_textfile(tmp_path, synthetic_source):
    workdir = workspace(tmp_path / "w")
    textfile = tmp_path / "textfile" / "mnist_pipeline.prom"
    with_metrics_section(workdir, textfile=textfile)
    empty = tmp_path / "empty"
    empty.mkdir()
    before = time.time()
    entry = str(Path(sys.executable).with_name("mnist-pipeline-luigi"))
    failed = subprocess.run([entry, *chain(empty, "--date", "2026-11-22")], cwd=workdir, capture_output=True,
                            text=True, timeout=300)
    assert failed.returncode == 30, failed.stderr[-3000:]
    found = samples(textfile.read_text())
    group = {"command": "luigi", "dataset": "synthetic"}
    assert before <= value(found, "mnist_pipeline_last_failure_timestamp_seconds", **group) <= time.time()
    assert value(found, "mnist_pipeline_last_exit_code", reason="task_failed", **group) == 30
    assert not [k for k in found if k[0] == "mnist_pipeline_last_success_timestamp_seconds"]


# The alerting rules the README gives operators (Prometheus rule file format).
ALERT_RULES = """\
groups:
  - name: mnist-pipeline
    rules:
      - alert: MnistPipelineNoSuccess
        expr: time() - max by (dataset) (mnist_pipeline_last_success_timestamp_seconds) > 26 * 3600
        labels: {severity: page}
        annotations:
          summary: "mnist-pipeline: no successful run for {{ $labels.dataset }} in 26 h"
      - alert: MnistPipelineLowTestAccuracy
        expr: mnist_pipeline_accuracy{split="test", dataset="fashion-mnist"} < 0.8
        annotations:
          summary: "mnist-pipeline: {{ $labels.run }} has test accuracy {{ $value }}"
      - alert: MnistPipelineNotReproducible
        expr: mnist_pipeline_reproducible == 0
        annotations:
          summary: "mnist-pipeline: {{ $labels.run }} differs in its bits from the previous date's run"
"""
RULE_TESTS = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1h
    input_series:
      # a nightly success at 02:00 on day 0, then none
      - series: 'mnist_pipeline_last_success_timestamp_seconds{command="luigi",dataset="fashion-mnist"}'
        values: '7200x40'
      - series: 'mnist_pipeline_accuracy{command="luigi",dataset="fashion-mnist",run="r1",split="test"}'
        values: '0.85 0.85 0.71'
      - series: 'mnist_pipeline_reproducible{command="luigi",dataset="fashion-mnist",run="r1"}'
        values: '1 0'
    alert_rule_test:
      - eval_time: 27h
        alertname: MnistPipelineNoSuccess
        exp_alerts: []
      - eval_time: 29h
        alertname: MnistPipelineNoSuccess
        exp_alerts:
          - exp_labels: {severity: page, dataset: fashion-mnist}
            exp_annotations: {summary: "mnist-pipeline: no successful run for fashion-mnist in 26 h"}
      - eval_time: 1h
        alertname: MnistPipelineLowTestAccuracy
        exp_alerts: []
      - eval_time: 2h
        alertname: MnistPipelineLowTestAccuracy
        exp_alerts:
          - exp_labels: {command: luigi, dataset: fashion-mnist, run: r1, split: test}
            exp_annotations: {summary: "mnist-pipeline: r1 has test accuracy 0.71"}
      - eval_time: 1h
        alertname: MnistPipelineNotReproducible
        exp_alerts:
          - exp_labels: {command: luigi, dataset: fashion-mnist, run: r1}
            exp_annotations: {summary: "mnist-pipeline: r1 differs in its bits from the previous date's run"}
"""


def test_the_readme_alert_rules_fire_as_documented(tmp_path):
    """promtool (Debian's prometheus package) evaluates the rules on series shaped as ours."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    (tmp_path / "rules.yml").write_text(ALERT_RULES)
    (tmp_path / "tests.yml").write_text(RULE_TESTS)
    done = subprocess.run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
