"""Locations: where the pipeline's files live, on a local disk or in an S3-compatible bucket.

A *location* is a string, checked once by `parse`: a local path (`artifacts/mnist/run`) or
`s3://bucket/key`. Every function below takes one and does the same thing on either backend;
this is the one module that knows which backend a location is on. The S3 backend needs boto3
(`pip install 'mnist-pipeline[s3]'`), imported only when an s3 location is used.

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
  fail (a process killed during a multipart upload leaves its parts: `gc` removes them).
- A write given `lease=` happens only while that lease is still held (checked, and renewed,
  just before the write).
- What a write returns (`Stored`: size, and on a bucket the ETag the store computed from the
  content) is what `stat` returns later while the content is the same; nothing here trusts an
  object's own metadata.
- Transient S3 errors (503 SlowDown, 500, timeouts, connection resets) are retried with
  bounded, jittered backoff (botocore's "standard" mode; reads of a response body too).
- A missing object is FileNotFoundError; an unreachable endpoint or a missing bucket is a
  one-line StorageError.
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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.atomic import atomic_path, exclusive_lock, fsync_path
from pipeline.errors import ParameterError, PipelineError, StorageError

logger = logging.getLogger("luigi-interface")

#: Files up to this size are one PutObject; larger ones a multipart upload of PART_SIZE parts.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
#: Tries per S3 request (botocore "standard" retry mode: exponential backoff, at most 20 s).
MAX_ATTEMPTS = 8
#: The [s3] keys read from luigi's config.
S3_KEYS = ("endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key",
           "aws_session_token", "max_attempts")
#: The file a data or artifacts root holds once the pipeline made it; gc acts only below one.
MARKER = ".mnist-pipeline"

_CHUNK = 1024 * 1024
_STREAM_TRIES = 6
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class LeaseLost(PipelineError):
    """A lease's holder no longer holds it (it expired and another owner took it over)."""


@dataclass(frozen=True)
class Stored:
    """What the store says of an object's content: its size and, on a bucket, the ETag it
    computed from the bytes when they were written (None on a local disk)."""

    size: int
    etag: str = None


# ---------------------------------------------------------------------------------------------
# locations


def parse(text, what="location"):
    """`text` as a location, or a one-line ParameterError: s3://bucket[/key] with a valid bucket
    name and no empty, `.` or `..` part in the key; or a non-empty local path. A trailing `/`
    is dropped."""
    text = str(text)

    def invalid(why):
        return ParameterError(f"invalid {what}={text}: must be a directory path or s3://bucket/prefix ({why})")

    if text.startswith("s3:") or "://" in text:
        if not text.startswith("s3://"):
            raise invalid("no other scheme is known")
        bucket, _, key = text[len("s3://"):].partition("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise invalid(f"{bucket!r} is not a bucket name: 3-63 lower-case letters, digits, '.' and '-'")
        key = key.rstrip("/")
        if key and any(part in ("", ".", "..") for part in key.split("/")):
            raise invalid("a key may not hold '//', '.' or '..' parts")
        if any(ord(c) < 32 for c in key):
            raise invalid("a key may not hold control characters")
        return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if not text.strip() or "\0" in text:
        raise invalid("it is empty")
    return text.rstrip("/") or "/"


def is_remote(location):
    """Whether a location is in a bucket (else on the local disk)."""
    return str(location).startswith("s3://")


def join(location, *names):
    """`location` with `names` appended (`/`-separated on a bucket)."""
    location = str(location)
    if is_remote(location):
        return "/".join([location.rstrip("/"), *(str(name).strip("/") for name in names if str(name))])
    return str(Path(location, *names))


def relative(location, root):
    """The `/`-separated name of `location` below `root`, or None when it is not below it."""
    location, root = str(location), str(root)
    if is_remote(location) != is_remote(root):
        return None
    if is_remote(location):
        if location == root:
            return ""
        return location[len(root) + 1:] if location.startswith(root.rstrip("/") + "/") else None
    try:
        return Path(os.path.abspath(location)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return None


def resolve(base, name):
    """The location of `name` (`/`-separated, may hold `..`) seen from the directory `base`."""
    base, name = str(base), str(name)
    if is_remote(name) or os.path.isabs(name):
        return name
    if is_remote(base):
        bucket, key = _split(base)
        joined = PurePosixPath(key, name).as_posix()
        parts = []
        for part in joined.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        return f"s3://{bucket}/" + "/".join(parts)
    return os.path.abspath(os.path.join(base, name))


def relative_name(location, base):
    """`location` as `resolve(base, ...)` reads it back: relative to the directory `base` on the
    same store, else the location itself (absolute for local paths)."""
    location, base = str(location), str(base)
    if is_remote(location) != is_remote(base):
        return location if is_remote(location) else os.path.abspath(location)
    if is_remote(location):
        bucket, key = _split(location)
        base_bucket, base_key = _split(base)
        if bucket != base_bucket:
            return location
        import posixpath

        return posixpath.relpath(key, base_key or ".")
    return os.path.relpath(location, base)


def parent(location):
    location = str(location)
    if is_remote(location):
        return location.rsplit("/", 1)[0] if location.count("/") > 2 else location
    return str(Path(location).parent)


def basename(location):
    return str(location).rstrip("/").rsplit("/", 1)[-1]


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


def _plain_errors(function):
    """Turn an unreachable endpoint, a missing bucket or refused credentials into one line."""
    import functools

    @functools.wraps(function)
    def call(location, *args, **kwargs):
        try:
            return function(location, *args, **kwargs)
        except (PipelineError, FileNotFoundError):
            raise
        except Exception as error:
            _raise(location, error)
    return call


def _translated(location, error):
    """A StorageError for the errors a user fixes outside the pipeline, else None."""
    name = type(error).__name__
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return StorageError(f"cannot reach the S3 endpoint for {location} ({error}): check [s3] endpoint_url "
                            f"in luigi.cfg or AWS_ENDPOINT_URL, and that the store is running")
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return StorageError(f"no S3 credentials for {location}: set them in [s3] of luigi.cfg or the "
                            f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY variables")
    code = _error_code(error) if any(c.__name__ == "ClientError" for c in type(error).__mro__) else None
    if code == "NoSuchBucket":
        return StorageError(f"the bucket of {location} does not exist: create it, or fix data_dir/artifacts_dir")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return StorageError(f"the S3 store refused access to {location} ({code}): check the credentials in [s3]")
    return None


def _raise(location, error):
    translated = _translated(location, error)
    if translated is not None:
        raise translated from None
    raise error


def check_reachable(location, *, settings=None):
    """StorageError (one line) unless the bucket of an s3 location can be reached; nothing for
    a local location."""
    if not is_remote(location):
        return
    bucket, _ = _split(location)
    try:
        _client(location, settings).head_bucket(Bucket=bucket)
    except Exception as error:
        if _is_client_error(error, *_MISSING, "NoSuchBucket"):
            raise StorageError(f"the bucket {bucket!r} of {location} does not exist: create it, or fix "
                               f"data_dir/artifacts_dir") from None
        _raise(location, error)


# ---------------------------------------------------------------------------------------------
# objects


def stat(location, *, settings=None):
    """Stored(size, etag) of the object at location (etag None for a local file), or None when
    there is none. One HEAD request on a bucket."""
    if not is_remote(location):
        try:
            return Stored(os.stat(location).st_size) if Path(location).is_file() else None
        except OSError:
            return None
    bucket, key = _split(location)
    try:
        head = _client(location, settings).head_object(Bucket=bucket, Key=key)
    except Exception as error:
        if _is_client_error(error, *_MISSING):
            return None
        _raise(location, error)
    return Stored(int(head["ContentLength"]), head["ETag"])


def exists(location, *, settings=None):
    """Whether an object (or local file) is at location."""
    return stat(location, settings=settings) is not None


def publish(local_file, location, *, lease=None, settings=None, multipart_threshold=MULTIPART_THRESHOLD,
            part_size=PART_SIZE):
    """Copy local_file to location so that it appears whole or not at all; return its Stored.

    S3: one PutObject up to multipart_threshold bytes, else a multipart upload that is aborted
    on any error (nothing is left, not even its parts). Local: written beside the target,
    fsynced, renamed over it (nothing at all when it is the same file)."""
    local_file = Path(local_file)
    if not is_remote(location):
        if lease is not None:
            lease.confirm()
        if os.path.abspath(local_file) != os.path.abspath(location):
            with atomic_path(location) as temporary:
                shutil.copyfile(local_file, temporary)
        return Stored(os.stat(location).st_size)
    client = _client(location, settings)
    bucket, key = _split(location)
    size = local_file.stat().st_size
    try:
        if size <= multipart_threshold:
            if lease is not None:
                lease.confirm()
            with open(local_file, "rb") as body:
                etag = client.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=size)["ETag"]
            return Stored(size, etag)
        return Stored(size, _multipart(client, bucket, key, local_file, size, part_size, location, lease))
    except (PipelineError, FileNotFoundError):
        raise
    except Exception as error:
        _raise(location, error)


def _multipart(client, bucket, key, local_file, size, part_size, location, lease):
    part_size = max(part_size, -(-size // 10000))  # S3 takes at most 10,000 parts
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        parts = []
        with open(local_file, "rb") as handle:
            while chunk := handle.read(part_size):
                number = len(parts) + 1
                etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                          Body=chunk)["ETag"]
                parts.append({"ETag": etag, "PartNumber": number})
        if lease is not None:
            lease.confirm()  # the object appears only now
        try:
            return client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                                    MultipartUpload={"Parts": parts})["ETag"]
        except Exception as error:
            # A retried Complete whose first try succeeded finds no upload: the object is there.
            if not _is_client_error(error, "NoSuchUpload"):
                raise
            head = client.head_object(Bucket=bucket, Key=key)
            if int(head["ContentLength"]) != size or not head["ETag"].strip('"').endswith(f"-{len(parts)}"):
                raise
            return head["ETag"]
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        except Exception as error:
            if not _is_client_error(error, "NoSuchUpload", "404"):
                logger.warning("could not abort the multipart upload of %s (%s); `mnist-pipeline gc` removes "
                               "it", location, error)
        raise


def require_backend(location):
    """ParameterError (one line, what to install) unless s3 locations can be used here."""
    if is_remote(location):
        _import_boto3(location)


def fetch(location, cache_dir, sha256, *, settings=None):
    """A local path holding location's content, which must have this sha256 (the digest its
    record holds): DataError-free only when the bytes match.

    S3: downloaded into cache_dir/<sha256>/<name> and hashed while it is read; a cached copy is
    used when its bytes still hash to sha256 (no download). A download that does not match is
    a StorageError naming the object (it was changed since it was recorded). Local: the path
    itself, after the same check."""
    if not is_remote(location):
        path = Path(location)
        if not path.is_file():
            raise FileNotFoundError(f"{location} does not exist")
        if file_sha256(path) != sha256:
            raise StorageError(f"{location} does not match the digest its record holds: rerun to remake it")
        return path
    target = Path(cache_dir, str(sha256), PurePosixPath(_split(location)[1]).name or "object")
    if target.is_file() and file_sha256(target) == sha256:
        os.utime(target)  # recently used, for gc
        return target
    client = _client(location, settings)
    bucket, key = _split(location)
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

            _read_object(client, bucket, key, location, sink)
            handle.flush()
            if hasher[0].hexdigest() != sha256:
                raise StorageError(f"{location} does not match the digest its record holds (sha256 "
                                   f"{hasher[0].hexdigest()[:12]}..., recorded {str(sha256)[:12]}...): it was "
                                   f"changed since; rerun to remake it")
    except (PipelineError, FileNotFoundError):
        raise
    except Exception as error:
        _raise(location, error)
    return target


_digests = {}  # (path, size, mtime, ctime, inode) -> sha256: a file is hashed once while unchanged


def file_sha256(path):
    """sha256 (hex) of a local file's bytes, hashed again only when its stat identity changed."""
    path = Path(path)
    stat_ = path.stat()
    key = (os.path.abspath(path), stat_.st_size, stat_.st_mtime_ns, stat_.st_ctime_ns, stat_.st_ino)
    if key not in _digests:
        _digests[key] = _sha256_file(path)
    return _digests[key]


@_plain_errors
def listing(prefix_location, *, settings=None):
    """{name: Stored} of every object under prefix_location/, at any depth (names `/`-separated,
    relative to the prefix); {} when there is none. One LIST request per 1,000 objects on a
    bucket. Local temporaries are not listed."""
    if not is_remote(prefix_location):
        root = Path(prefix_location)
        if not root.is_dir():
            return {}
        found = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and not (path.name.startswith(".") and path.name.endswith(".tmp")):
                found[path.relative_to(root).as_posix()] = Stored(path.stat().st_size)
        return found
    client = _client(prefix_location, settings)
    bucket, key = _split(prefix_location)
    prefix = key.rstrip("/") + "/" if key else ""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            found[entry["Key"][len(prefix):]] = Stored(int(entry["Size"]), entry["ETag"])
    return dict(sorted(found.items()))


@_plain_errors
def read_bytes(location, *, settings=None):
    """The whole content of the object at location; FileNotFoundError when there is none."""
    if not is_remote(location):
        return Path(location).read_bytes()
    bucket, key = _split(location)
    parts = []

    def sink(chunk):
        if chunk is None:
            parts.clear()
        else:
            parts.append(chunk)

    _read_object(_client(location, settings), bucket, key, location, sink)
    return b"".join(parts)


@_plain_errors
def write_bytes(location, data, *, lease=None, settings=None):
    """Store `data` (bytes, or str as UTF-8) at location, whole or not at all; return its Stored."""
    data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if lease is not None:
        lease.confirm()
    if not is_remote(location):
        with atomic_path(location) as temporary:
            temporary.write_bytes(data)
        return Stored(len(data))
    bucket, key = _split(location)
    etag = _client(location, settings).put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
    return Stored(len(data), etag)


@_plain_errors
def delete(location, *, lease=None, settings=None):
    """Remove the object at location; nothing happens when there is none."""
    if lease is not None:
        lease.confirm()
    if not is_remote(location):
        Path(location).unlink(missing_ok=True)
        if Path(location).parent.is_dir():
            fsync_path(Path(location).parent)
        return
    bucket, key = _split(location)
    _client(location, settings).delete_object(Bucket=bucket, Key=key)


@_plain_errors
def update(location, change, *, settings=None, tries=50):
    """Replace the content of location with change(old bytes or None) atomically with respect to
    every other `update` of it: on a disk under an exclusive lock, on a bucket by a write
    conditional on the ETag read (If-Match, or If-None-Match when there was none), tried again
    when another writer came first. Returns the new content."""
    if not is_remote(location):
        lock = Path(parent(location), ".locks", basename(location) + ".lock")
        with exclusive_lock(lock):
            try:
                old = Path(location).read_bytes()
            except FileNotFoundError:
                old = None
            new = change(old)
            write_bytes(location, new)
            return new
    client = _client(location, settings)
    bucket, key = _split(location)
    for attempt in range(tries):
        try:
            response = client.get_object(Bucket=bucket, Key=key)
            old, condition = response["Body"].read(), {"IfMatch": response["ETag"]}
        except Exception as error:
            if not _is_client_error(error, *_MISSING):
                raise
            old, condition = None, {"IfNoneMatch": "*"}
        new = change(old)
        new = new.encode("utf-8") if isinstance(new, str) else bytes(new)
        try:
            client.put_object(Bucket=bucket, Key=key, Body=new, **condition)
            return new
        except Exception as error:
            if not _is_client_error(error, *_CONFLICT, *_MISSING):
                raise
            try:  # a retried write whose first try took effect fails its own condition: look
                if new != old and client.get_object(Bucket=bucket, Key=key)["Body"].read() == new:
                    return new
            except Exception as again:
                if not _is_client_error(again, *_MISSING):
                    raise
        time.sleep(min(2.0, 0.02 * 2 ** attempt) * (0.5 + _jitter()))
    raise StorageError(f"{location} could not be updated: {tries} other writers came first; try again")


def _jitter():
    return int.from_bytes(os.urandom(2), "big") / 65535


def local_copy(location, folder):
    """A local path holding the object at location, or every object under it (a directory):
    the location itself on a disk (whether or not anything is there), else copies made in
    folder() (called once, when needed); FileNotFoundError when nothing is in the bucket there."""
    if not is_remote(location):
        return Path(location)
    names = listing(location)
    root = Path(folder(), basename(location))
    if not names:
        root.write_bytes(read_bytes(location))
        return root
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(read_bytes(join(location, name)))
    return root


def marked(location, *, settings=None):
    """Whether location is a root the pipeline made (it holds MARKER)."""
    return exists(join(location, MARKER), settings=settings)


def mark(location, *, settings=None):
    """Write MARKER into a root the pipeline writes to, unless it is there."""
    marker = join(location, MARKER)
    if not exists(marker, settings=settings):
        write_bytes(marker, "made by mnist-pipeline: `mnist-pipeline gc` may remove what it wrote below here\n",
                    settings=settings)


def unfinished_uploads(prefix_location, *, settings=None):
    """[(name below the prefix, upload id, initiated)] of the multipart uploads under a location
    never completed ([] on a disk, where a killed write leaves a temporary file instead)."""
    if not is_remote(prefix_location):
        return []
    client = _client(prefix_location, settings)
    bucket, key = _split(prefix_location)
    prefix = key.rstrip("/") + "/" if key else ""
    found = []
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        found += [(u["Key"][len(prefix):], u["UploadId"], u.get("Initiated")) for u in page.get("Uploads", [])]
    return found


def abort_upload(prefix_location, name, upload_id, *, settings=None):
    """Abort the multipart upload of `name` below the prefix (its parts go); nothing when gone."""
    bucket, _ = _split(prefix_location)
    key = _split(join(prefix_location, name))[1]
    try:
        _client(prefix_location, settings).abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except Exception as error:
        if not _is_client_error(error, "NoSuchUpload", *_MISSING):
            raise


def inventory(location, *, settings=None):
    """{name: Stored} of everything under a root, as a cleaner sees it: on a disk every file,
    temporaries and symbolic links included (each with its own size); in a bucket every object
    (one LIST per 1,000)."""
    if is_remote(location):
        return listing(location, settings=settings)
    found = {}
    for directory, dirs, files in os.walk(location):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            try:
                found[Path(path).relative_to(location).as_posix()] = Stored(os.lstat(path).st_size)
            except OSError:
                pass  # gone meanwhile
    return dict(sorted(found.items()))


def subdirectories(location, *, settings=None):
    """Names of the directories (prefixes, in a bucket) directly under location, empty ones too
    on a disk; symbolic links are not followed."""
    if is_remote(location):
        return sorted({name.split("/", 1)[0] for name in listing(location, settings=settings) if "/" in name})
    try:
        return sorted(entry.name for entry in os.scandir(location) if entry.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def local_directory(text, what):
    """`text` as a local directory's path; ParameterError for a bucket location (a worker's own
    cache, say, is on its disk)."""
    location = parse(text, what)
    if is_remote(location):
        raise ParameterError(f"invalid {what}={text}: must be a local directory")
    return Path(location)


def remove_tree(location, objects, first=(), *, settings=None):
    """Remove a file or directory: `first` (locations) in their order, then the rest of
    `objects` (in parallel in a bucket), and on a disk the directory itself with anything left.
    True when there was something to remove."""
    from concurrent.futures import ThreadPoolExecutor

    for item in first:
        delete(item, settings=settings)
    rest = [item for item in objects if item not in set(first)]
    if is_remote(location) and len(rest) > 4:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: delete(item, settings=settings), rest))
    else:
        for item in rest:
            delete(item, settings=settings)
    if not is_remote(location) and os.path.isdir(location) and not os.path.islink(location):
        shutil.rmtree(location, ignore_errors=True)
        return True
    return bool(objects)


# ---------------------------------------------------------------------------------------------
# roots: where the tasks make and read files


class Root:
    """A data or artifacts root as the tasks use it: its location, and the local directory in
    which files are made and read (the location itself on a disk; for a bucket, a working copy
    in cache_dir named by the location, so two buckets never share one).

    path(...) names a local file; where(path) is the location it stands for; publish(path)
    makes the location hold it (nothing to copy on a disk); pull(location, entry) makes the
    local file hold the bytes a record vouches for (verified, through a digest-keyed cache)."""

    def __init__(self, location, cache_dir, kind):
        self.location = str(location)
        self.remote = is_remote(self.location)
        self.local = Path(cache_dir, f"{kind}-{hashlib.sha256(self.location.encode()).hexdigest()[:12]}") \
            if self.remote else Path(self.location)
        self.objects = Path(cache_dir, "objects")
        self._published = {}  # local path -> (sha256, Stored) published by this process

    def path(self, *names):
        return self.local.joinpath(*names)

    def where(self, path):
        """The location a local path under this root stands for."""
        name = relative(path, self.local)
        if name is None:
            return str(path)
        return join(self.location, name) if self.remote else str(path)

    def local_path(self, location):
        """The local file that stands for a location under this root (None when not under it)."""
        name = relative(location, self.location)
        return None if name is None else self.local.joinpath(*[n for n in name.split("/") if n])

    def publish(self, path, lease=None):
        """Make path's location hold path's bytes (once per content); return the Stored."""
        digest = file_sha256(path)
        known = self._published.get(str(path))
        if self.remote and known and known[0] == digest:
            return known[1]
        stored = publish(path, self.where(path), lease=lease)
        self._published[str(path)] = (digest, stored)
        return stored

    def pull(self, location, entry):
        """Make the local file for location hold the bytes whose sha256 entry records; on a disk
        the file is the location and was verified by its record."""
        path = self.local_path(location)
        if not self.remote or path is None:
            return
        if path.is_file() and file_sha256(path) == entry.get("sha256"):
            return
        cached = fetch(location, self.objects, entry.get("sha256"))
        with atomic_path(path) as temporary:
            temporary.unlink()
            try:
                os.link(cached, temporary)  # the cache's bytes, not a second copy of them
            except OSError:
                shutil.copyfile(cached, temporary)

    def delete(self, path, lease=None):
        """Remove a file here and at its location."""
        if self.remote:
            delete(self.where(path), lease=lease)
        Path(path).unlink(missing_ok=True)

    def mark(self):
        """Say, in the root itself, that the pipeline made it (gc acts only in such roots)."""
        mark(self.location)


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
    the workers' clocks must agree to well within ttl_seconds (NTP). A lease object that is not
    one (not JSON, no numeric expiry) counts as expired; one whose expiry lies further ahead
    than this lease's ttl counts as expired once it has not changed for ttl seconds.
    `confirm()` renews the lease now, conditionally: a write made right after it happens while
    no one else can hold the lease, and writes take a `lease=` to do exactly that.
    Local: fcntl.flock on the file; the lock goes with its process, ttl is not needed, and the
    file is removed on release.
    """

    _holder, _holder_expires = None, None

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
        self._expires = 0.0
        self._handle = None
        self._renewing = threading.Lock()
        self._seen = {}  # ETag of another owner's lease -> monotonic time it was first seen

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
            raise LeaseLost(f"lease {self.location} of {self.owner} was lost (another worker took it over after "
                            f"{self.ttl_seconds:g} s without renewal): stopping before publishing anything more")

    def confirm(self):
        """Renew the lease now, on condition that it is still ours; LeaseLost when it is not.
        After it returns, no other owner can take the lease for ttl_seconds."""
        self.check()
        if not is_remote(self.location):
            return
        with self._renewing:
            try:
                renewed = self._put(IfMatch=self._etag)
            except LeaseLost:
                raise
            except Exception as error:
                if time.time() < self._expires - self.ttl_seconds / 3:
                    logger.warning("lease %s could not be renewed (%s); it is still valid", self.location, error)
                    return
                raise
            if not renewed:
                self._lost.set()
                self.check()

    def acquire(self, wait=True, timeout=None, poll=None):
        """Take the lease; return True when held. wait=False: one try. Otherwise try until it is
        taken or `timeout` seconds (None: no limit) have passed, every `poll` seconds
        (default ttl/10, between 0.05 and 2)."""
        if self._held:
            raise RuntimeError(f"lease {self.location} is already held by this object")
        poll = poll if poll is not None else min(2.0, max(0.05, self.ttl_seconds / 10))
        deadline = None if timeout is None else time.monotonic() + timeout
        waited, next_word = None, 0.0
        while True:
            if self._try():
                if waited is not None:
                    logger.info("lease %s: taken after waiting %.0f s", self.location, time.monotonic() - waited)
                self._held = True
                self._lost.clear()
                if is_remote(self.location):
                    self._stop.clear()
                    self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                                    name=f"lease-renewer {self.location}")
                    self._thread.start()
                return True
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                return False
            waited = time.monotonic() if waited is None else waited
            if time.monotonic() >= next_word:  # every wait says what it waits for, then every 30 s
                until = f" until {time.ctime(self._holder_expires)}" if self._holder_expires else ""
                logger.info("waiting for lease %s, held by %s%s", self.location, self._holder or "another owner", until)
                next_word = time.monotonic() + 30
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def release(self):
        """Give the lease up (only if still ours: a successor's lease is left alone)."""
        if not self._held:
            return
        self._held = False
        if not is_remote(self.location):
            Path(self.location).unlink(missing_ok=True)  # under the lock: see _try_local
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
        return self._try_s3() if is_remote(self.location) else self._try_local()

    def _try_local(self):
        path = Path(self.location)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            self._holder, self._holder_expires = "another process on this machine", None
            return False
        try:  # the file may have been removed by its last holder since we opened it
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            handle.close()
            return self._try_local()
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
            content = json.loads(content)
        except ValueError:
            content = None
        return (content if isinstance(content, dict) else {}), response["ETag"]  # not a lease: expired

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
            self._etag, self._expires = etag, _expiry(content) or 0.0
            return True
        expires = _expiry(content)
        first_seen = self._seen.setdefault(etag, time.monotonic())
        capped = expires is not None and expires > time.time() + self.ttl_seconds
        if capped:  # further ahead than any holder renewing every ttl/3 would write
            expires = time.time() + self.ttl_seconds - (time.monotonic() - first_seen)
        self._holder, self._holder_expires = str(content.get("owner", "?"))[:200], expires
        if expires is not None and expires > time.time():
            return False
        if self._put(IfMatch=etag):
            why = ("its expiry lay further ahead than ttl_seconds and it did not change" if capped else
                   "it was not a lease" if expires is None else f"it expired at {time.ctime(expires)}")
            logger.warning("lease %s: took over from %s: %s", self.location, self._holder, why)
            return True
        return False

    def _renew_loop(self):
        while not self._stop.wait(self.ttl_seconds / 3):
            try:
                with self._renewing:
                    renewed = self._put(IfMatch=self._etag)
                if not renewed:
                    logger.error("lease %s of %s was lost: another owner took it over", self.location, self.owner)
                    self._lost.set()
                    return
            except Exception as error:
                logger.warning("lease %s could not be renewed (%s); trying again", self.location, error)
                if time.time() >= self._expires:
                    logger.error("lease %s of %s expired before it could be renewed", self.location, self.owner)
                    self._lost.set()
                    return


def _expiry(content):
    """A lease body's expiry (seconds since the epoch), or None when it has no usable one."""
    try:
        expires = float(content.get("expires"))
    except (TypeError, ValueError):
        return None
    return expires if expires == expires and abs(expires) != float("inf") else None


@dataclass(frozen=True)
class LockState:
    """What a lock under .locks/ is now: held (some process holds it, or its lease lies ahead),
    stale (nobody will come back for it: it may be removed) and why."""

    held: bool
    stale: bool
    why: str = ""


def lock_state(location, now=None, *, settings=None):
    """The LockState of a lock file (a local flock; an exclusive_lock's `*.lock` file is never
    stale, removing it could let two holders in) or of a lease object in a bucket (held until
    its expiry, stale a ttl after it; a body that is not a lease is neither)."""
    now = time.time() if now is None else now
    if not is_remote(location):
        held = _flock_held(location)
        return LockState(held, not held and not location.endswith(".lock"), "a lock file no process holds")
    expires, ttl = _lease_body(location, settings)
    if expires is None:
        return LockState(False, False)
    return LockState(expires >= now, expires + ttl < now,
                     f"a lease that expired at {time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime(expires))} "
                     f"and was not renewed")


def remove_stale_lock(location, now=None, *, settings=None):
    """Remove a lock that lock_state() calls stale, checked again now: a local file under its own
    flock (a contender that opened it sees it gone, as after Lease.release), a lease object only
    while it is still expired. True when it was removed."""
    if is_remote(location):
        expires, ttl = _lease_body(location, settings)
        if expires is None or expires + ttl >= (time.time() if now is None else now):
            return False
        delete(location, settings=settings)
        return True
    try:
        handle = open(location, "rb")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # taken meanwhile
        try:
            if os.fstat(handle.fileno()).st_ino != os.stat(location).st_ino:
                return False
            os.unlink(location)
            return True
        except FileNotFoundError:
            return False
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _flock_held(path):
    """Whether some process holds the flock of this file (unknown counts as held)."""
    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _lease_body(location, settings=None):
    """(expires, ttl_seconds) of a lease object's body ({owner, token, expires, ttl_seconds}),
    or (None, None) when there is none or it is not one."""
    try:
        body = json.loads(read_bytes(location, settings=settings))
    except (FileNotFoundError, ValueError):
        return None, None
    expires = _expiry(body) if isinstance(body, dict) and {"owner", "token"} <= set(body) else None
    if expires is None:
        return None, None
    try:
        ttl = float(body.get("ttl_seconds") or 60.0)
    except (TypeError, ValueError):
        ttl = 60.0
    return expires, max(ttl, 0.0)
