"""Leases in a bucket (moto's server on 127.0.0.1): a worker that lost its lease publishes
nothing more, and lease objects that are not what they claim do not stop the others."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid

import h5py
import pytest

from pipeline import storage
from runner import KILLER, RUN, run, workspace
from s3server import S3Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3server():
    with S3Server() as server:
        yield server


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _weights(data):
    import io

    with h5py.File(io.BytesIO(data), "r") as f:
        return {name: f["params"][name][()].tobytes() for name in ("W1", "b1", "W2", "b2")}


def test_a_worker_frozen_past_its_lease_stops_without_publishing(tmp_path, s3server, synthetic_source):
    s3, prefix = s3server, f"lease-{uuid.uuid4().hex[:8]}"
    chain = ["--module", "pipeline.tasks", "EvaluateNetwork", "--local-scheduler", "--dataset", "synthetic",
             "--source-dir", str(synthetic_source), "--local-dirs", "[]", "--mirrors", "[]", *RUN]
    reference = workspace(tmp_path / "reference")
    done = run([*chain, "--data-dir", "data", "--artifacts-dir", "artifacts"], reference)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (reference / "artifacts" / "synthetic").glob("h30-*")

    bucket = ["--data-dir", f"s3://{s3.bucket}/{prefix}/data", "--artifacts-dir", f"s3://{s3.bucket}/{prefix}/artifacts",
              "--lease-seconds", "3"]
    env = {**os.environ, **s3.env}
    # A stops itself right after saving its third checkpoint, before publishing it
    frozen = subprocess.Popen([sys.executable, KILLER, "pipeline.checkpoint:save_checkpoint", "3", "freeze", "--",
                               *chain, *bucket], cwd=workspace(tmp_path / "a"), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _state(frozen.pid) == "T", 120, "worker A to freeze")
        time.sleep(3.5)  # past its lease: it renews nothing while frozen
        other = run([*chain, *bucket], workspace(tmp_path / "b"), env=env)
        assert other.returncode == 0, other.stderr[-3000:]
        assert "took over from" in other.stderr and "resuming training from iteration 12" in other.stderr
        client = s3.client()

        def bucket_state():
            found = client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix + "/").get("Contents", [])
            return {entry["Key"]: entry["ETag"] for entry in found}

        after_b = bucket_state()
        frozen.send_signal(signal.SIGCONT)
        _, stderr = frozen.communicate(timeout=120)
    finally:
        if frozen.poll() is None:
            frozen.kill()
            frozen.communicate()
    assert frozen.returncode == 30, stderr[-3000:]  # [retcode] task_failed
    lost = [line for line in stderr.splitlines() if "was lost" in line]
    assert lost and "stopping before publishing anything more" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert bucket_state() == after_b  # A published nothing once it woke: not a checkpoint, not a record
    model = client.get_object(Bucket=s3.bucket, Key=f"{prefix}/artifacts/synthetic/{run_dir.name}/model.h5")
    assert _weights(model["Body"].read()) == _weights((run_dir / "model.h5").read_bytes())
    status = run(["status", *chain[4:], *bucket], workspace(tmp_path / "c"), tool="cli", env=env)
    assert status.returncode == 0, status.stdout + status.stderr


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"owner": "x"}', b'{"expires": "soon"}',
                                  b'{"expires": NaN}', b"\xff\xfe"])
def test_a_lease_object_that_is_not_a_lease_counts_as_expired(s3server, body, caplog):
    location = s3server.url(f"malformed-{uuid.uuid4().hex[:8]}/lease")
    bucket, key = storage._split(location)
    s3server.client().put_object(Bucket=bucket, Key=key, Body=body)
    lease = storage.Lease(location, owner="worker", ttl_seconds=5, settings=s3server.settings)
    with caplog.at_level(logging.WARNING, logger="luigi-interface"):
        assert lease.acquire(wait=False)
    try:
        assert lease.held and json.loads(storage.read_bytes(location, settings=s3server.settings))["owner"] == "worker"
        assert "it was not a lease" in caplog.text
    finally:
        lease.release()


def test_a_lease_far_in_the_future_is_capped_by_the_ttl_and_the_wait_says_so(s3server, caplog):
    location = s3server.url(f"future-{uuid.uuid4().hex[:8]}/lease")
    bucket, key = storage._split(location)
    body = {"owner": "a clock 30 years ahead", "token": "x", "expires": time.time() + 30 * 365 * 86400}
    s3server.client().put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
    lease = storage.Lease(location, owner="worker", ttl_seconds=1.5, settings=s3server.settings)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="luigi-interface"):
        assert lease.acquire(wait=True, timeout=20)
    try:
        waited = time.monotonic() - started
        assert 1.0 <= waited < 10, waited
        assert "waiting for lease" in caplog.text and "a clock 30 years ahead" in caplog.text
        assert "further ahead than ttl_seconds" in caplog.text
    finally:
        lease.release()


def test_a_lease_renewed_by_its_holder_is_never_taken_however_long_it_is_held(s3server):
    location = s3server.url(f"live-{uuid.uuid4().hex[:8]}/lease")
    holder = storage.Lease(location, owner="holder", ttl_seconds=1.0, settings=s3server.settings)
    other = storage.Lease(location, owner="other", ttl_seconds=1.0, settings=s3server.settings)
    with holder:
        assert not other.acquire(wait=True, timeout=3.0, poll=0.1)  # three ttls: renewed all along
        holder.confirm()
        assert holder.held
    assert other.acquire(wait=False)
    other.release()


def test_a_lost_lease_refuses_every_write_given_it(s3server, tmp_path):
    location = s3server.url(f"lost-{uuid.uuid4().hex[:8]}")
    lease = storage.Lease(storage.join(location, "lease"), owner="a", ttl_seconds=5, settings=s3server.settings)
    assert lease.acquire(wait=False)
    bucket, key = storage._split(storage.join(location, "lease"))
    s3server.client().put_object(Bucket=bucket, Key=key, Body=b'{"owner": "b", "token": "t", "expires": 0}')
    target = storage.join(location, "model.h5")
    source = tmp_path / "model.h5"
    source.write_bytes(b"weights")
    with pytest.raises(storage.LeaseLost, match="was lost"):
        storage.publish(source, target, lease=lease, settings=s3server.settings)
    with pytest.raises(storage.LeaseLost):
        storage.write_bytes(target, b"x", lease=lease, settings=s3server.settings)
    assert not storage.exists(target, settings=s3server.settings)
    lease.release()  # a lost lease is not deleted: it is the new holder's
    assert storage.exists(storage.join(location, "lease"), settings=s3server.settings)


@pytest.mark.parametrize("case", ["missing bucket", "unreachable endpoint"])
def test_a_bucket_that_cannot_be_used_is_one_line_before_anything_runs(tmp_path, s3server, synthetic_source, case):
    env = {**os.environ, **s3server.env}
    bucket = s3server.bucket
    if case == "missing bucket":
        bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    else:
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard: nothing answers there
        env["AWS_MAX_ATTEMPTS"] = "2"
    flags = ["--dataset", "synthetic", "--source-dir", str(synthetic_source), "--local-dirs", "[]", "--mirrors", "[]",
             "--data-dir", f"s3://{bucket}/data", "--artifacts-dir", f"s3://{bucket}/artifacts", *RUN]
    workdir = workspace(tmp_path / "w")
    for command in (["status", *flags], ["run", *flags], ["inspect", "--artifacts-dir", f"s3://{bucket}/artifacts"]):
        done = run(command, workdir, tool="cli", env=env, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        expected = "does not exist: create it" if case == "missing bucket" else "cannot reach the S3 endpoint"
        assert expected in lines[0], lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == ["luigi.cfg"]
