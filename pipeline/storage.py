"""Where the pipeline's files live when workers share nothing but a bucket.

A *location* is a string: a local path (`artifacts/mnist/run.h5`) or `s3://bucket/key`. Every
function below takes one and does the same thing on either backend; the S3 backend needs boto3
(`pip install 'mnist-pipeline[s3]'`), imported only when an s3:// location is used.

S3 endpoint, credentials and region come from luigi's config section [s3] when it has them

    [s3]
    endpoint_url = http://minio.example:9000
    aws_access_key_id = ...
    aws_secret_access_key = ...
    region_name = eu-central-1
    # tries per request, throttling (503 SlowDown) and connection resets included
    max_attempts = 8

and otherwise from boto3's usual sources (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ~/.aws, ...).
Every function also takes `settings=`, a mapping of the same keys, in place of the config.

Guarantees, on both backends:
- An object is never seen half-written: `publish` and `write_bytes` make it appear whole or
  not at all, and leave no temporary object or unfinished multipart upload behind when they
  fail (a process killed during a multipart upload leaves its parts until the bucket's
  AbortIncompleteMultipartUpload lifecycle rule removes them: set one).
- Transient S3 errors (503 SlowDown, 500, timeouts, connection resets) are retried with
  bounded, jittered backoff (botocore's "standard" mode; reads of a response body too).
- A missing object is FileNotFoundError.
"""

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path, PurePosixPath

from pipeline.atomic import atomic_path, fsync_path
from pipeline.errors import ParameterError, PipelineError

logger = logging.getLogger("luigi-interface")

#: Files up to this size are one PutObject; larger ones a multipart upload of PART_SIZE parts.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
#: Tries per S3 request (botocore "standard" retry mode: exponential backoff, at most 20 s).
MAX_ATTEMPTS = 8
#: The object metadata key (x-amz-meta-sha256) holding the content's SHA-256, hex.
DIGEST_KEY = "sha256"
#: The [s3] keys read from luigi's config.
S3_KEYS = ("endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key",
           "aws_session_token", "max_attempts")

_CHUNK = 1024 * 1024
_STREAM_TRIES = 6


class LeaseLost(PipelineError):
    """A lease's holder no longer holds it (it expired and another owner took it over)."""


# ---------------------------------------------------------------------------------------------
# locations and settings


def is_s3(location):
    return str(location).startswith("s3://")


def join(location, *names):
    """`location` with `names` appended, `/`-separated for S3, os.path for local paths."""
    location = str(location)
    if is_s3(location):
        return "/".join([location.rstrip("/"), *(str(name).strip("/") for name in names)])
    return str(Path(location, *names))


def _split(location):
    """s3://bucket/key -> (bucket, key); the key may be empty."""
    bucket, _, key = str(location)[len("s3://"):].partition("/")
    if not bucket:
        raise ParameterError(f"{location!r} names no bucket: write s3://bucket/prefix")
    return bucket, key


def s3_settings(config=None):
    """The S3 client settings: the S3_KEYS present in luigi's [s3] section (or in `config`, a
    luigi config parser or a plain mapping of those keys). Keys not set are left to boto3."""
    if config is None:
        import luigi.configuration

        config = luigi.configuration.get_config()
    if hasattr(config, "items") and not hasattr(config, "has_section"):
        found = {key: config[key] for key in S3_KEYS if config.get(key) not in (None, "")}
    else:
        found = {}
        for key in S3_KEYS:
            value = config.get("s3", key, None) if config.has_section("s3") else None
            if value not in (None, ""):
                found[key] = value
    if "max_attempts" in found:
        found["max_attempts"] = int(found["max_attempts"])
    return found


def _import_boto3(location):
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise ParameterError(f"{location} is on S3, which needs boto3: pip install 'mnist-pipeline[s3]'") from None
    return boto3, botocore


_clients = {}
_clients_lock = threading.Lock()


def _client(location, settings=None):
    """A boto3 S3 client for these settings, made once per process (clients are thread-safe)."""
    boto3, botocore = _import_boto3(location)
    settings = s3_settings() if settings is None else s3_settings(dict(settings))
    cache_key = (os.getpid(), tuple(sorted(settings.items())))
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            options = dict(settings)
            attempts = options.pop("max_attempts", MAX_ATTEMPTS)
            config = botocore.config.Config(retries={"max_attempts": attempts, "mode": "standard"},
                                            connect_timeout=10, read_timeout=60)
            client = boto3.session.Session().client("s3", config=config, **options)
            _clients[cache_key] = client
    return client


def _error_code(error):
    """The S3 error code of a botocore ClientError, or its HTTP status as a string."""
    response = getattr(error, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    return str(code or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _is_client_error(error, *codes):
    """Whether error is a botocore ClientError (or one of the subclasses botocore makes per code,
    such as NoSuchKey) with one of these codes."""
    return any(cls.__name__ == "ClientError" for cls in type(error).__mro__) and _error_code(error) in codes


_MISSING = ("404", "NoSuchKey", "NotFound")
_CONFLICT = ("412", "PreconditionFailed", "409", "ConditionalRequestConflict")


def _stream_errors(botocore):
    errors = botocore.exceptions
    return (errors.ResponseStreamingError, errors.IncompleteReadError, errors.ConnectionError,
            errors.ReadTimeoutError, ConnectionError)


def _read_object(client, bucket, key, location, sink, **conditions):
    """GET bucket/key into sink(chunk) with `conditions` (e.g. IfMatch); a body cut short is read
    again from the start (after sink(None), which tells the sink to start over). Returns the
    GetObject response."""
    _, botocore = _import_boto3(location)
    for attempt in range(_STREAM_TRIES):
        try:
            response = client.get_object(Bucket=bucket, Key=key, **conditions)
        except Exception as error:
            if _is_client_error(error, *_MISSING):
                raise FileNotFoundError(f"{location} does not exist") from None
            raise
        try:
            received = 0
            for chunk in response["Body"].iter_chunks(_CHUNK):
                sink(chunk)
                received += len(chunk)
            if received != response["ContentLength"]:
                raise botocore.exceptions.IncompleteReadError(actual_bytes=received,
                                                              expected_bytes=response["ContentLength"])
            return response
        except _stream_errors(botocore):
            if attempt == _STREAM_TRIES - 1:
                raise
            logger.warning("reading %s was cut short; reading it again", location)
            sink(None)
            time.sleep(0.2 * 2 ** attempt)


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# objects


def publish(local_file, location, *, settings=None, multipart_threshold=MULTIPART_THRESHOLD,
            part_size=PART_SIZE):
    """Copy local_file to location so that it appears whole or not at all; return its SHA-256.

    S3: one PutObject up to multipart_threshold bytes, else a multipart upload that is aborted
    on any error (nothing is left, not even its parts); the digest goes into the object's
    metadata for `fetch`. Local: written beside the target, fsynced, renamed over it."""
    local_file = Path(local_file)
    digest = _sha256_file(local_file)
    if not is_s3(location):
        with atomic_path(location) as temporary:
            shutil.copyfile(local_file, temporary)
        return digest
    client = _client(location, settings)
    bucket, key = _split(location)
    size = local_file.stat().st_size
    metadata = {DIGEST_KEY: digest}
    if size <= multipart_threshold:
        with open(local_file, "rb") as body:
            client.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=size, Metadata=metadata)
        return digest
    part_size = max(part_size, -(-size // 10000))  # S3 takes at most 10,000 parts
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata)["UploadId"]
    try:
        parts = []
        with open(local_file, "rb") as handle:
            while chunk := handle.read(part_size):
                number = len(parts) + 1
                etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                          Body=chunk)["ETag"]
                parts.append({"ETag": etag, "PartNumber": number})
        try:
            client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                             MultipartUpload={"Parts": parts})
        except Exception as error:
            # A retried Complete whose first try succeeded finds no upload: the object is there.
            if not (_is_client_error(error, "NoSuchUpload") and _digest_of(client, bucket, key) == digest):
                raise
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        except Exception as error:
            if not _is_client_error(error, "NoSuchUpload", "404"):
                logger.warning("could not abort the multipart upload of %s (%s); the bucket's lifecycle "
                               "rule must remove it", location, error)
        raise
    return digest


def _digest_of(client, bucket, key):
    try:
        return client.head_object(Bucket=bucket, Key=key)["Metadata"].get(DIGEST_KEY)
    except Exception as error:
        if _is_client_error(error, *_MISSING):
            return None
        raise


def remote_digest(location, *, settings=None):
    """The sha256 publish() recorded for the object at location, or None when there is no such
    object (or it was not written by publish)."""
    bucket, key = _split(location)
    return _digest_of(_client(location, settings), bucket, key)


def require_backend(location):
    """ParameterError (one line, what to install) unless s3:// locations can be used here."""
    if is_s3(location):
        _import_boto3(location)


def fetch(location, cache_dir, *, settings=None):
    """A local path holding location's current content.

    S3: downloaded into cache_dir/<sha256>/<name>, keyed by the digest that `publish` stored
    (the ETag where there is none); a cached copy whose content matches costs one HEAD request
    and no download, a damaged one is downloaded again. The download is verified against the
    digest and renamed into place, so concurrent fetches of one object are safe. Verifying a
    cached copy reads it whole (about 0.3 s for 188 MB).
    Local: the path itself (no copy)."""
    if not is_s3(location):
        path = Path(location)
        if not path.is_file():
            raise FileNotFoundError(f"{location} does not exist")
        return path
    client = _client(location, settings)
    bucket, key = _split(location)
    for attempt in range(_STREAM_TRIES):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except Exception as error:
            if _is_client_error(error, *_MISSING):
                raise FileNotFoundError(f"{location} does not exist") from None
            raise
        digest = head.get("Metadata", {}).get(DIGEST_KEY)
        etag = head["ETag"]
        slot = digest if digest else "etag-" + re.sub(r"[^0-9A-Za-z-]", "", etag)
        target = Path(cache_dir, slot, PurePosixPath(key).name or "object")
        if target.is_file() and target.stat().st_size == head["ContentLength"] and (
                not digest or _sha256_file(target) == digest):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_path(target) as temporary, open(temporary, "wb") as handle:
                hasher = [hashlib.sha256()]

                def sink(chunk):
                    if chunk is None:
                        handle.seek(0)
                        handle.truncate()
                        hasher[0] = hashlib.sha256()
                    else:
                        handle.write(chunk)
                        hasher[0].update(chunk)

                # IfMatch: a newer object published meanwhile is not mixed into this one.
                _read_object(client, bucket, key, location, sink, IfMatch=etag)
                handle.flush()
                if digest and hasher[0].hexdigest() != digest:
                    raise _DigestMismatch(f"{location}: downloaded content does not match its sha256 {digest}")
        except _DigestMismatch as error:
            logger.warning("%s; downloading it again", error)
            continue
        except Exception as error:
            if _is_client_error(error, *_CONFLICT):
                continue  # replaced between HEAD and GET: look again
            raise
        return target
    raise PipelineError(f"{location} could not be downloaded whole and verified in {_STREAM_TRIES} tries")


class _DigestMismatch(PipelineError):
    pass


def exists(location, *, settings=None):
    """Whether an object (or local file) is at location."""
    if not is_s3(location):
        return Path(location).is_file()
    bucket, key = _split(location)
    try:
        _client(location, settings).head_object(Bucket=bucket, Key=key)
    except Exception as error:
        if _is_client_error(error, *_MISSING):
            return False
        raise
    return True


def listing(prefix_location, *, settings=None):
    """Sorted names (`/`-separated, relative to the prefix) of every object under
    prefix_location/, at any depth; [] when there is none. Local temporaries are not listed."""
    if not is_s3(prefix_location):
        root = Path(prefix_location)
        if not root.is_dir():
            return []
        return sorted(path.relative_to(root).as_posix() for path in root.rglob("*")
                      if path.is_file() and not (path.name.startswith(".") and path.name.endswith(".tmp")))
    client = _client(prefix_location, settings)
    bucket, key = _split(prefix_location)
    prefix = key.rstrip("/") + "/" if key else ""
    names = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        names.extend(entry["Key"][len(prefix):] for entry in page.get("Contents", []))
    return sorted(names)


def read_bytes(location, *, settings=None):
    """The whole content of the object at location; FileNotFoundError when there is none."""
    if not is_s3(location):
        return Path(location).read_bytes()
    bucket, key = _split(location)
    parts = []

    def sink(chunk):
        if chunk is None:
            parts.clear()
        else:
            parts.append(chunk)

    try:
        _read_object(_client(location, settings), bucket, key, location, sink)
    except Exception as error:
        if _is_client_error(error, *_MISSING):
            raise FileNotFoundError(location) from None
        raise
    return b"".join(parts)


def write_bytes(location, data, *, settings=None):
    """Store `data` (bytes, or str as UTF-8) at location, whole or not at all."""
    data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if not is_s3(location):
        with atomic_path(location) as temporary:
            temporary.write_bytes(data)
        return
    bucket, key = _split(location)
    _client(location, settings).put_object(Bucket=bucket, Key=key, Body=data,
                                           Metadata={DIGEST_KEY: hashlib.sha256(data).hexdigest()})


def delete(location, *, settings=None):
    """Remove the object at location; nothing happens when there is none."""
    if not is_s3(location):
        Path(location).unlink(missing_ok=True)
        if Path(location).parent.is_dir():
            fsync_path(Path(location).parent)
        return
    bucket, key = _split(location)
    _client(location, settings).delete_object(Bucket=bucket, Key=key)


# ---------------------------------------------------------------------------------------------
# runs index: one object per run, so concurrent writers never lose or duplicate a row

_RUN_ID = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*")


def record_run(prefix_location, run_id, row, *, settings=None):
    """Write the index row of run `run_id` (a JSON-able dict) as prefix/runs/<run_id>.json,
    replacing that run's earlier row; return its location."""
    if not _RUN_ID.fullmatch(str(run_id)):
        raise ParameterError(f"run id {run_id!r} must be letters, digits and . _ = + - (not starting with .)")
    location = join(prefix_location, "runs", f"{run_id}.json")
    write_bytes(location, json.dumps({**row, "run_id": str(run_id)}, sort_keys=True), settings=settings)
    return location


def read_runs_index(prefix_location, *, settings=None):
    """Every row that record_run wrote under prefix_location, sorted by run_id."""
    rows = []
    runs = join(prefix_location, "runs")
    for name in listing(runs, settings=settings):
        if "/" in name or not name.endswith(".json"):
            continue
        try:
            rows.append(json.loads(read_bytes(join(runs, name), settings=settings)))
        except FileNotFoundError:
            continue  # deleted since it was listed
    return sorted(rows, key=lambda row: row["run_id"])


# ---------------------------------------------------------------------------------------------
# leases


class Lease:
    """An exclusive, expiring claim on `location` by `owner` (a name for people: host, pid, ...).

        with Lease("s3://bucket/prefix/locks/train-h50", owner="worker-3", ttl_seconds=60):
            ...  # only one holder at a time, across machines

    S3: the lease is a small JSON object {owner, token, expires}. acquire() creates it with a
    conditional PutObject (If-None-Match: *), so of racing owners exactly one succeeds. While it
    is held, a background thread renews it every ttl/3 with If-Match on its ETag; if the ETag
    changed (a stale lease was taken over), `lost` becomes true and `check()` raises LeaseLost.
    A lease not renewed past its expiry (its holder was killed) is taken over with a PutObject
    conditional on the stale ETag, so only one contender wins it. Expiry is wall-clock time:
    the workers' clocks must agree to well within ttl_seconds (NTP).
    Local: fcntl.flock on the file; the lock goes with its process, ttl is not needed.
    """

    def __init__(self, location, owner, ttl_seconds=60.0, *, settings=None):
        if ttl_seconds <= 0:
            raise ParameterError(f"ttl_seconds must be positive, not {ttl_seconds}")
        self.location = str(location)
        self.owner = str(owner)
        self.ttl_seconds = float(ttl_seconds)
        self.token = uuid.uuid4().hex
        self._settings = settings
        self._held = False
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._etag = None
        self._handle = None

    # -- public

    @property
    def held(self):
        """True between a successful acquire() and release(), unless the lease was lost."""
        return self._held and not self._lost.is_set()

    @property
    def lost(self):
        return self._lost.is_set()

    def check(self):
        """Raise LeaseLost unless this lease is held."""
        if not self.held:
            raise LeaseLost(f"lease {self.location} of {self.owner} is no longer held")

    def acquire(self, wait=True, timeout=None, poll=None):
        """Take the lease; return True when held. wait=False: one try. Otherwise try until it is
        taken or `timeout` seconds (None: no limit) have passed, every `poll` seconds
        (default ttl/10, between 0.05 and 2)."""
        if self._held:
            raise RuntimeError(f"lease {self.location} is already held by this object")
        poll = poll if poll is not None else min(2.0, max(0.05, self.ttl_seconds / 10))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try():
                self._held = True
                self._lost.clear()
                if is_s3(self.location):
                    self._stop.clear()
                    self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                                    name=f"lease-renewer {self.location}")
                    self._thread.start()
                return True
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def release(self):
        """Give the lease up (only if still ours: a successor's lease is left alone)."""
        if not self._held:
            return
        self._held = False
        if not is_s3(self.location):
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._lost.is_set():
            return
        bucket, key = _split(self.location)
        try:
            self._s3().delete_object(Bucket=bucket, Key=key, IfMatch=self._etag)
        except Exception as error:
            if not _is_client_error(error, *_MISSING, *_CONFLICT):
                raise

    def __enter__(self):
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc_info):
        self.release()

    def __repr__(self):
        return f"Lease({self.location!r}, owner={self.owner!r}, held={self.held})"

    # -- local

    def _try(self):
        return self._try_s3() if is_s3(self.location) else self._try_local()

    def _try_local(self):
        path = Path(self.location)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"owner": self.owner, "token": self.token, "pid": os.getpid()}) + "\n")
        handle.flush()
        self._handle = handle
        return True

    # -- S3

    def _s3(self):
        return _client(self.location, self._settings)

    def _body(self):
        expires = time.time() + self.ttl_seconds
        return expires, json.dumps({"owner": self.owner, "token": self.token, "expires": expires,
                                    "ttl_seconds": self.ttl_seconds}).encode()

    def _read(self):
        """(content dict, ETag) of the lease object, or (None, None) when there is none."""
        bucket, key = _split(self.location)
        try:
            response = self._s3().get_object(Bucket=bucket, Key=key)
            content = response["Body"].read()
        except Exception as error:
            if _is_client_error(error, *_MISSING):
                return None, None
            raise
        try:
            return json.loads(content), response["ETag"]
        except ValueError:
            return {}, response["ETag"]  # not ours: treated as expired

    def _put(self, **condition):
        """Write a fresh lease body under `condition`; True when it was written (by this call,
        or by an earlier try of it whose answer was lost), False when the condition failed."""
        bucket, key = _split(self.location)
        expires, body = self._body()
        try:
            self._etag = self._s3().put_object(Bucket=bucket, Key=key, Body=body, **condition)["ETag"]
            self._expires = expires
            return True
        except Exception as error:
            if not _is_client_error(error, *_CONFLICT, *_MISSING):
                raise
        content, etag = self._read()
        if content and content.get("token") == self.token:
            self._etag, self._expires = etag, content.get("expires", expires)
            return True
        return False

    def _try_s3(self):
        if self._put(IfNoneMatch="*"):
            return True
        content, etag = self._read()
        if etag is None:
            return self._put(IfNoneMatch="*")  # released meanwhile
        if content.get("token") == self.token:
            self._etag, self._expires = etag, content.get("expires", 0)
            return True
        if float(content.get("expires", 0)) > time.time():
            return False
        if self._put(IfMatch=etag):
            logger.warning("lease %s: took over from %s, whose lease expired at %s", self.location,
                           content.get("owner", "?"), time.ctime(float(content.get("expires", 0))))
            return True
        return False

    def _renew_loop(self):
        while not self._stop.wait(self.ttl_seconds / 3):
            try:
                if not self._put(IfMatch=self._etag):
                    logger.error("lease %s of %s was lost: another owner took it over", self.location, self.owner)
                    self._lost.set()
                    return
            except Exception as error:
                logger.warning("lease %s could not be renewed (%s); trying again", self.location, error)
                if time.time() >= self._expires:
                    logger.error("lease %s of %s expired before it could be renewed", self.location, self.owner)
                    self._lost.set()
                    return
