"""pipeline.storage against moto's S3 server on 127.0.0.1 (tests/s3server.py), directly and
through a proxy that throttles and resets connections, and on local directories."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import luigi.configuration
import pytest

from pipeline import runs, storage
from pipeline.errors import ParameterError, StorageError
from s3server import FaultyProxy, S3Server

pytestmark = pytest.mark.slow  # servers on 127.0.0.1 and processes racing: tens of seconds

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3server():
    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3server):
    """The server, and a fresh prefix in its bucket for this test."""
    s3server.prefix = s3server.url(f"t-{uuid.uuid4().hex[:8]}")
    return s3server


def random_file(path, size, seed=0):
    path = Path(path)
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    # not compressible, not periodic: mix in the position
    data = bytes(b ^ (i * 131 + i // 256) & 0xFF for i, b in enumerate(data)) if size < 4 * MiB else os.urandom(size)
    path.write_bytes(data)
    return path


def unfinished_uploads(s3):
    _, key = storage._split(s3.prefix)
    return s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=key).get("Uploads", [])


def bucket_keys(s3):
    _, key = storage._split(s3.prefix)
    return sorted(entry["Key"] for entry in
                  s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=key).get("Contents", []))


def run_python(code, env, *args):
    """Start `code` in a new Python process with `env` added to the environment."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env={**os.environ, **env},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Processes that race start together: each, once imported and connected, prints "ready" and
# waits for a line on stdin; the test sends it to all of them at once.
READY = """
    import sys
    from pipeline import storage
    storage.exists(storage.join(sys.argv[1], "warm-up"))  # connected (for S3)
    print("ready", flush=True)
    sys.stdin.readline()
"""


def start_together(processes):
    for process in processes:
        assert process.stdout.readline().strip() == "ready", process.communicate()
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()


# ---------------------------------------------------------------------------------------------
# objects


@pytest.mark.parametrize("size, multipart", [(300_000, False), (11 * MiB, True)])
def test_publish_fetch_round_trip_is_byte_identical(tmp_path, s3, size, multipart):
    source = random_file(tmp_path / "model.h5", size)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    location = storage.join(s3.prefix, "runs-data", "model.h5")
    stored = storage.publish(source, location, settings=s3.settings,
                             multipart_threshold=5 * MiB if multipart else 64 * MiB, part_size=5 * MiB)
    _, key = storage._split(location)
    head = s3.client().head_object(Bucket=s3.bucket, Key=key)
    assert stored == storage.Stored(size, head["ETag"]) == storage.stat(location, settings=s3.settings)
    assert head["Metadata"] == {}  # nothing trusts an object's own description, so none is written
    assert ("-" in head["ETag"]) == multipart  # a multipart ETag is "<md5 of md5s>-<parts>"
    fetched = storage.fetch(location, tmp_path / "cache", digest, settings=s3.settings)
    assert fetched == tmp_path / "cache" / digest / "model.h5"
    assert fetched.read_bytes() == source.read_bytes()
    assert storage.exists(location, settings=s3.settings)
    assert storage.listing(s3.prefix, settings=s3.settings) == {"runs-data/model.h5": stored}
    assert bucket_keys(s3) == [key] and unfinished_uploads(s3) == []
    storage.delete(location, settings=s3.settings)
    storage.delete(location, settings=s3.settings)  # deleting nothing is fine
    assert not storage.exists(location, settings=s3.settings)
    with pytest.raises(FileNotFoundError):
        storage.fetch(location, tmp_path / "other-cache", digest, settings=s3.settings)


def test_local_locations_behave_the_same(tmp_path):
    source = random_file(tmp_path / "src.bin", 100_000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    location = str(tmp_path / "store" / "a" / "b.bin")
    assert storage.publish(source, location) == storage.Stored(100_000) == storage.stat(location)
    assert storage.fetch(location, tmp_path / "cache", digest).read_bytes() == source.read_bytes()
    with pytest.raises(StorageError):
        storage.fetch(location, tmp_path / "cache", "0" * 64)
    storage.write_bytes(str(tmp_path / "store" / "c.txt"), "hello")
    assert storage.read_bytes(str(tmp_path / "store" / "c.txt")) == b"hello"
    assert storage.exists(location) and not storage.exists(location + ".nope")
    assert list(storage.listing(str(tmp_path / "store"))) == ["a/b.bin", "c.txt"]
    storage.delete(location)
    assert list(storage.listing(str(tmp_path / "store"))) == ["c.txt"]
    with pytest.raises(FileNotFoundError):
        storage.fetch(location, tmp_path / "cache", digest)


def test_a_download_is_used_only_when_its_bytes_match_the_recorded_digest(tmp_path, s3):
    source = random_file(tmp_path / "train.h5", 2 * MiB)
    recorded = hashlib.sha256(source.read_bytes()).hexdigest()
    location = storage.join(s3.prefix, "train.h5")
    storage.publish(source, location, settings=s3.settings)
    with FaultyProxy(s3.endpoint) as proxy:  # no faults: it only counts
        settings = proxy.settings(s3)
        first = storage.fetch(location, tmp_path / "cache", recorded, settings=settings)
        assert proxy.counts["GET"] == 1
        second = storage.fetch(location, tmp_path / "cache", recorded, settings=settings)
        assert second == first and proxy.counts["GET"] == 1  # a cached copy that hashes right: no request
        with open(first, "r+b") as handle:  # one flipped byte in the cached copy
            handle.seek(1000)
            byte = handle.read(1)
            handle.seek(1000)
            handle.write(bytes([byte[0] ^ 1]))
        third = storage.fetch(location, tmp_path / "cache", recorded, settings=settings)
        assert third == first and proxy.counts["GET"] == 2
        assert third.read_bytes() == source.read_bytes()
        # Other bytes at the same location, whatever their metadata says, are not what was recorded.
        random_file(source, 2 * MiB, seed=1)
        _, key = storage._split(location)
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=source.read_bytes(), Metadata={"sha256": recorded})
        shutil.rmtree(tmp_path / "cache")
        with pytest.raises(StorageError, match="does not match the digest its record holds"):
            storage.fetch(location, tmp_path / "cache", recorded, settings=settings)
        assert not (tmp_path / "cache" / recorded / "train.h5").exists()


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_multipart_upload_leaves_nothing(tmp_path, s3, interruption):
    source = random_file(tmp_path / "big.bin", 12 * MiB)
    location = storage.join(s3.prefix, "big.bin")
    client = storage._client(location, s3.settings)
    parts = []

    def die_on_part_2(params, **_):
        parts.append(params["PartNumber"])
        if params["PartNumber"] == 2:
            raise interruption("killed during the upload")

    client.meta.events.register("before-parameter-build.s3.UploadPart", die_on_part_2)
    try:
        with pytest.raises(interruption):
            storage.publish(source, location, settings=s3.settings, multipart_threshold=5 * MiB, part_size=5 * MiB)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.UploadPart", die_on_part_2)
    assert parts == [1, 2]
    assert not storage.exists(location, settings=s3.settings)
    assert bucket_keys(s3) == []  # no object, no temporary key
    assert unfinished_uploads(s3) == []  # the upload was aborted, its part 1 is gone


def test_an_interrupted_local_publish_leaves_nothing(tmp_path, monkeypatch):
    source = random_file(tmp_path / "src.bin", 100_000)
    store = tmp_path / "store"

    def copy_half(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:50_000])
        raise OSError("disk full")

    monkeypatch.setattr(storage.shutil, "copyfile", copy_half)
    with pytest.raises(OSError):
        storage.publish(source, str(store / "x.bin"))
    assert list(store.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# leases

RACER = READY + """
    import time
    base, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    start = time.time() + 0.2
    held = []
    for r in range(rounds):
        time.sleep(max(0.0, start + 0.3 * r - time.time()))
        lease = storage.Lease(storage.join(base, f"lease-{r}"), owner=name, ttl_seconds=30)
        got = lease.acquire(wait=False)
        print(r, int(got), flush=True)
        if got:
            held.append(lease)
    time.sleep(max(0.0, start + 0.3 * rounds + 0.3 - time.time()))  # both tried every round
    for lease in held:
        lease.release()
"""


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_two_processes_racing_for_a_lease_exactly_one_holds_it(tmp_path, s3, backend):
    base = s3.prefix if backend == "s3" else str(tmp_path / "locks")
    rounds = 8
    racers = [run_python(RACER, s3.env, base, name, rounds) for name in ("left", "right")]
    start_together(racers)
    outputs = [racer.communicate(timeout=60) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    won = [dict(map(int, line.split()) for line in out.splitlines()) for out, _ in outputs]
    for r in range(rounds):
        assert won[0][r] + won[1][r] == 1, (r, won)
    if backend == "s3":
        assert bucket_keys(s3) == []  # each winner released its lease


HOLDER = """
    import sys, time
    from pipeline import storage
    lease = storage.Lease(sys.argv[1], owner="doomed", ttl_seconds=float(sys.argv[2]))
    assert lease.acquire(wait=False)
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_holders_lease_is_taken_over_after_its_ttl(s3):
    location = storage.join(s3.prefix, "lease")
    ttl = 2.0
    holder = run_python(HOLDER, s3.env, location, ttl)
    try:
        assert holder.stdout.readline().strip() == "held"
        contender = storage.Lease(location, owner="survivor", ttl_seconds=ttl, settings=s3.settings)
        time.sleep(2 * ttl)  # past the first expiry: the holder renews it
        assert not contender.acquire(wait=False)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        killed = time.monotonic()
        assert contender.acquire(wait=True, timeout=5 * ttl, poll=0.1)
        waited = time.monotonic() - killed
    finally:
        holder.kill()
        holder.wait()
    # at most one ttl after the last renewal, itself at most ttl/3 before the kill
    assert waited <= ttl + 1.0, waited
    content = json.loads(storage.read_bytes(location, settings=s3.settings))
    assert content["owner"] == "survivor" and contender.held
    contender.release()
    assert not storage.exists(location, settings=s3.settings)


def test_a_holder_notices_that_its_lease_was_taken(s3):
    location = storage.join(s3.prefix, "lease")
    lease = storage.Lease(location, owner="slow", ttl_seconds=0.6, settings=s3.settings)
    assert lease.acquire(wait=False)
    lease.check()
    # Another owner overwrites it (as a takeover of an expired lease would).
    storage.write_bytes(location, json.dumps({"owner": "thief", "token": "x", "expires": time.time() + 60}),
                        settings=s3.settings)
    deadline = time.monotonic() + 3
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.lost and not lease.held
    with pytest.raises(storage.LeaseLost):
        lease.check()
    lease.release()  # leaves the thief's lease alone
    assert json.loads(storage.read_bytes(location, settings=s3.settings))["owner"] == "thief"


def test_a_lease_as_a_context_manager_waits_for_the_holder(tmp_path, s3):
    location = storage.join(s3.prefix, "lease")
    first = storage.Lease(location, owner="first", ttl_seconds=5, settings=s3.settings)
    second = storage.Lease(location, owner="second", ttl_seconds=5, settings=s3.settings)
    with first:
        assert first.held and not second.acquire(wait=True, timeout=0.5, poll=0.1)
    with second:
        assert second.held
    assert not storage.exists(location, settings=s3.settings)


# ---------------------------------------------------------------------------------------------
# runs index

WRITER = READY + """
    from pipeline import runs
    base, i = sys.argv[1], int(sys.argv[2])
    runs.add_run(base, {"run_id": f"run-{i}", "dataset": "d", "test_accuracy": i / 10, "seed": i})
"""


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_eight_concurrent_writers_make_eight_index_rows(tmp_path, s3, backend, monkeypatch):
    base = s3.prefix if backend == "s3" else str(tmp_path / "index")
    writers = [run_python(WRITER, s3.env, base, i) for i in range(8)]
    start_together(writers)
    outputs = [writer.communicate(timeout=60) for writer in writers]
    assert [writer.returncode for writer in writers] == [0] * 8, outputs
    monkeypatch.setattr(storage, "s3_settings", lambda config=None: s3.settings)
    rows = sorted(runs.read_runs(base), key=lambda row: row["run_id"])
    assert [row["run_id"] for row in rows] == [f"run-{i}" for i in range(8)]
    assert [row["seed"] for row in rows] == [str(i) for i in range(8)]
    # Recording a run again replaces its row; a malformed row is skipped, never fatal.
    runs.add_run(base, {"run_id": "run-3", "dataset": "d", "test_accuracy": 1.0})
    csv_location = storage.join(base, "runs.csv")
    storage.write_bytes(csv_location, storage.read_bytes(csv_location) + b"../escape,\n\xff\xfe,garbage\n")
    rows = runs.read_runs(base)
    assert len(rows) == 8 and runs.find_run(base, "run-3")["test_accuracy"] == "1.0"
    runs.add_run(base, {"run_id": "run-8", "dataset": "d", "test_accuracy": 0.5})
    assert len(runs.read_runs(base)) == 9 and b"escape" not in storage.read_bytes(csv_location)


# ---------------------------------------------------------------------------------------------
# a faulty network


def test_every_operation_succeeds_through_throttling_and_resets(tmp_path, s3):
    small = random_file(tmp_path / "small.bin", 200_000, seed=2)
    large = random_file(tmp_path / "large.bin", 11 * MiB, seed=3)
    with FaultyProxy(s3.endpoint, slowdown=0.15, reset=0.05, reset_after=0.05, truncate=0.05, seed=7) as proxy:
        settings = proxy.settings(s3)
        for name, source, options in (("small.bin", small, {}),
                                      ("large.bin", large, {"multipart_threshold": 5 * MiB, "part_size": 5 * MiB})):
            location = storage.join(s3.prefix, "data", name)
            storage.publish(source, location, settings=settings, **options)
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
            assert storage.fetch(location, tmp_path / "cache", digest, settings=settings).read_bytes() == \
                source.read_bytes()
            assert storage.exists(location, settings=settings)
        for i in range(4):
            storage.write_bytes(storage.join(s3.prefix, "notes", f"{i}.txt"), f"note {i}", settings=settings)
            storage.update(storage.join(s3.prefix, "counter"), lambda old: str(int(old or 0) + 1), settings=settings)
        assert [storage.read_bytes(storage.join(s3.prefix, "notes", f"{i}.txt"), settings=settings)
                for i in range(4)] == [f"note {i}".encode() for i in range(4)]
        assert storage.read_bytes(storage.join(s3.prefix, "counter"), settings=settings) == b"4"
        for i in range(2):
            lease = storage.Lease(storage.join(s3.prefix, "lease"), owner=f"o{i}", ttl_seconds=0.9, settings=settings)
            assert lease.acquire(wait=True, timeout=30)
            time.sleep(1.0)  # three renewals, through the faults (or the lease is lost)
            assert lease.held
            lease.release()
        storage.delete(storage.join(s3.prefix, "notes", "0.txt"), settings=settings)
        assert not storage.exists(storage.join(s3.prefix, "notes", "0.txt"), settings=settings)
        names = storage.listing(s3.prefix, settings=settings)
    assert proxy.counts["faults"] >= 10, proxy.counts
    assert all(proxy.counts[fault] for fault in ("slowdown", "reset", "reset_after", "truncate")), proxy.counts
    expected = ["counter", "data/large.bin", "data/small.bin"] + [f"notes/{i}.txt" for i in range(1, 4)]
    assert list(names) == expected and bucket_keys(s3) == [storage._split(s3.prefix)[1] + "/" + n for n in expected]
    assert unfinished_uploads(s3) == []
    # what the proxy let through is what was sent
    _, key = storage._split(s3.prefix)
    body = s3.client().get_object(Bucket=s3.bucket, Key=key + "/data/large.bin")["Body"].read()
    assert body == large.read_bytes()


# ---------------------------------------------------------------------------------------------
# configuration


def test_settings_come_from_luigis_s3_section(tmp_path, s3, monkeypatch):
    for variable in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    config = luigi.configuration.get_config()
    config.add_section("s3")
    try:
        for key, value in {**s3.settings, "max_attempts": "3"}.items():
            config.set("s3", key, str(value))
        assert storage.s3_settings() == {**s3.settings, "max_attempts": 3}
        location = storage.join(s3.prefix, "via-config.txt")
        storage.write_bytes(location, "configured")  # no settings=: luigi's [s3] section
        assert storage.read_bytes(location) == b"configured"
    finally:
        config.remove_section("s3")
    assert storage.s3_settings() == {}
    assert storage.s3_settings({"endpoint_url": "http://x", "other": 1}) == {"endpoint_url": "http://x"}


def test_without_boto3_an_s3_location_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` raises ImportError
    monkeypatch.setattr(storage, "_clients", {})
    with pytest.raises(ParameterError) as caught:
        storage.exists("s3://bucket/model.h5")
    message = str(caught.value)
    assert "\n" not in message and "pip install 'mnist-pipeline[s3]'" in message, message
    # local locations do not need it
    storage.write_bytes(str(tmp_path / "x"), b"1")
    assert storage.exists(str(tmp_path / "x"))
