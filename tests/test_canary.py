"""The reproducibility canary: a run's record against the previous date's, and three dated runs
end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import canary
from runner import chain, workspace

DATA = {"images.h5": "a" * 64, "labels.h5": "b" * 64}


def params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {"W1": rng.standard_normal((4, 3)).astype(dtype), "b1": np.zeros(3, dtype),
            "W2": rng.standard_normal((3, 2)).astype(dtype), "b2": np.zeros(2, dtype)}


def record(date, weights, data=DATA, **environment):
    env = {**canary.environment(), **environment}
    return {"weights_sha256": canary.weights_sha256(weights), "data_sha256": dict(data), "environment": env,
            "date": date, "run_id": f"h4-{date}"}


def test_environment_names_the_versions_blas_threads_and_cpu_flags():
    env = canary.environment()
    assert set(env) >= {"python", "numpy", "h5py", "luigi", "blas", "blas_version", "blas_threads", "cpu_flags"}
    assert env["numpy"] == np.__version__
    assert isinstance(env["blas_threads"], int) and env["blas_threads"] >= 1
    assert isinstance(env["cpu_flags"], list)


def test_blas_threads_in_the_environment_follow_threadpool_limits():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        assert canary.environment()["blas_threads"] == 1


def test_weights_digest_changes_with_one_last_bit_and_with_dtype():
    weights = params()
    flipped = {k: v.copy() for k, v in weights.items()}
    flipped["W2"].view(np.uint32)[0, 0] ^= 1  # the last bit of one float32
    assert canary.weights_sha256(weights) == canary.weights_sha256(params())
    assert canary.weights_sha256(weights) != canary.weights_sha256(flipped)
    assert canary.weights_sha256(params(dtype=np.float64)) != canary.weights_sha256(weights)


def test_identical_weights_from_the_same_data_are_reproducible():
    status, message = canary.compare(record("2026-11-23", params()), record("2026-11-22", params()))
    assert status == "reproducible"
    assert message == "h4-2026-11-23: weights bit-identical to h4-2026-11-22 of 2026-11-22"


def test_different_bits_name_the_blas_thread_count_that_changed():
    previous = record("2026-11-22", params(), blas_threads=1)
    current = record("2026-11-23", params(seed=1), blas_threads=2)
    status, message = canary.compare(current, previous)
    assert status == "different-bits"
    assert "blas_threads 1 -> 2" in message and "h4-2026-11-22" in message
    assert "numpy" not in message  # only what changed


def test_different_bits_name_versions_and_cpu_flags_that_changed():
    previous = record("2026-11-22", params(), numpy="2.3.0", cpu_flags=["avx", "sse4_2"])
    current = record("2026-11-23", params(seed=1), numpy="2.4.6", cpu_flags=["avx", "avx2"])
    status, message = canary.compare(current, previous)
    assert status == "different-bits"
    assert "numpy 2.3.0 -> 2.4.6" in message and "cpu_flags +avx2 -sse4_2" in message


def test_different_bits_with_nothing_changed_says_so():
    status, message = canary.compare(record("2026-11-23", params(seed=1)), record("2026-11-22", params()))
    assert status == "different-bits" and "nothing recorded changed" in message


def test_other_data_is_different_data_whatever_the_weights():
    other = {**DATA, "labels.h5": "c" * 64}
    status, message = canary.compare(record("2026-11-23", params(seed=1), data=other), record("2026-11-22", params()))
    assert status == "different-data" and "changed: labels.h5" in message


def test_no_previous_run():
    status, message = canary.compare(record("2026-11-23", params()), None)
    assert status == "no-previous" and "h4-2026-11-23" in message


@pytest.mark.parametrize("dates, before, expected", [
    (["2026-11-20", "2026-11-22", "2026-11-21"], "2026-11-23", "2026-11-22"),
    (["2026-11-20", "2026-11-24"], "2026-11-23", "2026-11-20"),  # a later date is not "previous"
    (["2026-11-23"], "2026-11-23", None),  # the run itself
    ([], "2026-11-23", None),
])
def test_newest_earlier_picks_the_latest_date_before(dates, before, expected):
    found = canary.newest_earlier([{"date": d} for d in dates] + [{"date": None}], before)
    assert (found or {}).get("date") == expected


def test_reproducible_despite_a_changed_environment_names_the_change():
    previous = record("2026-11-22", params(), blas_threads=1)
    status, message = canary.compare(record("2026-11-23", params(), blas_threads=2), previous)
    assert status == "reproducible" and message.endswith("(changed since, without effect: blas_threads 1 -> 2)")


@pytest.mark.slow
def test_dated_runs_compare_with_the_previous_date_end_to_end(tmp_path, synthetic_source):
    """Two dates with the same inputs are bit-identical; a third with two BLAS threads either
    differs in its last bits (named: blas_threads 1 -> 2) or says the change had no effect; its
    report's canary holds the environment compare() names the change from, and its page says so. The metrics textfile
    holds mnist_pipeline_reproducible."""
    workdir = workspace(tmp_path / "w")
    with open(workdir / "luigi.cfg", "a") as f:
        f.write(f"\n[metrics]\ntextfile = {tmp_path / 'mnist_pipeline.prom'}\n")
    entry = [str(Path(sys.executable).with_name("mnist-pipeline-luigi"))]
    logs = {}
    for date, extra in (("2026-11-01", []), ("2026-11-02", []), ("2026-11-03", ["--blas-threads", "2"])):
        done = subprocess.run([*entry, *chain(synthetic_source, "--date", date, *extra)], cwd=workdir,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        logs[date] = done.stderr
    record = {p.parent.parent.name.split("-s4-")[1][:10]: json.loads(p.read_text())["canary"]
              for p in (workdir / "artifacts" / "synthetic").glob("*/report/report.json")}
    pages = {date: (workdir / "artifacts" / "synthetic" / r["run_id"] / "report" / "index.html").read_text()
             for date, r in record.items()}
    assert 'id="canary" data-value="reproducible"' in pages["2026-11-02"]
    assert record["2026-11-01"]["status"] == "no-previous"
    assert record["2026-11-02"]["status"] == "reproducible"
    assert [line for line in logs["2026-11-02"].splitlines() if "canary:" in line][0].endswith(
        f"weights bit-identical to {record['2026-11-01']['run_id']} of 2026-11-01")
    third = record["2026-11-03"]
    assert third["environment"]["blas_threads"] == 2 and record["2026-11-02"]["environment"]["blas_threads"] == 1
    if third["status"] == "different-bits":
        assert "blas_threads 1 -> 2" in third["message"] and " WARNING: canary:" in logs["2026-11-03"]
    else:  # equal bits on this tiny data: the change is named all the same, and would be with other bits
        assert third["status"] == "reproducible" and "without effect: blas_threads 1 -> 2" in third["message"]
        status, message = canary.compare({**third, "weights_sha256": "0" * 64}, record["2026-11-02"])
        assert status == "different-bits" and "changed since: blas_threads 1 -> 2" in message
    reproducible = {s.labels["run"]: s.value for family in text_string_to_metric_families(
        (tmp_path / "mnist_pipeline.prom").read_text()) for s in family.samples
        if s.name == "mnist_pipeline_reproducible"}
    assert reproducible == {third["run_id"]: 1.0 if third["status"] == "reproducible" else 0.0}
