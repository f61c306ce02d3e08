"""What each artifact was made from, recorded when it is made and checked before it is trusted.

A task's record (a small JSON file) holds the sha256 of every file it wrote and of every
file it read. Its outputs are complete only while both still match: a file changed,
damaged or replaced since, on either side, makes them stale. Records and files may be local
paths or s3:// locations (published whole by pipeline.storage, their sha256 in the object's
metadata); paths in a record are relative to it, so a tree keeps its records when moved.
"""

import datetime
import hashlib
import json
import os
import posixpath
from pathlib import Path

from pipeline import storage
from pipeline.atomic import write_atomically

FORMAT_VERSION = 1
_digests = {}  # (path, stat identity) -> sha256, so a file is hashed once per process while unchanged


def file_digest(path):
    """sha256 of a file's bytes (hex); OSError when it cannot be read. For an s3:// location, the
    digest recorded when it was published (FileNotFoundError when there is no such object)."""
    if storage.is_s3(path):
        digest = storage.remote_digest(str(path))
        if digest is None:
            raise FileNotFoundError(str(path))
        return digest
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def write_record(record_path, *, outputs, inputs, locate=str, **facts):
    """Record outputs and inputs ({label: local path}) with their digests, and any JSON-ready
    facts (e.g. seconds taken); written atomically, after the outputs themselves. locate maps a
    local path to the location it stands for (an s3:// one when the files are published)."""
    where = locate(record_path)

    def entries(files):  # paths relative to the record, so a moved tree keeps its records
        return {label: {"path": _relative(locate(path), where), "sha256": file_digest(path)}
                for label, path in files.items()}

    record = {
        "format_version": FORMAT_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "outputs": entries(outputs),
        "inputs": entries(inputs),
        **facts,
    }
    write_atomically(record_path, json.dumps(record, indent=2) + "\n")
    return record


def read_record(record_path):
    """The record as written, or None when it is missing or unreadable."""
    try:
        record = json.loads(storage.read_bytes(str(record_path)))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and all(isinstance(record.get(k), dict) for k in ("outputs", "inputs"))
    return record if ok else None


def problem(record_path, inputs, outputs=None):
    """None when the record vouches for its outputs and for these inputs ({label: path}) as they
    are on disk now; otherwise why not, in a few words ("missing", "damaged: ...", "input changed: ...").
    inputs=None checks the outputs alone; outputs ({label: path}), when given, must be the recorded ones."""
    record = read_record(record_path)
    if record is None:
        return "missing" if not storage.exists(str(record_path)) else f"its record {record_path} is unreadable"
    if outputs is not None and set(outputs) != set(record["outputs"]):
        return "its record lists other outputs"
    for entry in record["outputs"].values():
        path = resolve(record_path, str(entry.get("path")))
        if _changed(path, entry):
            return f"{'changed or damaged' if storage.exists(path) else 'missing'}: {path}"
    if inputs is None:
        return None
    if set(inputs) != set(record["inputs"]):
        return "made from other inputs"
    for label, path in inputs.items():
        entry = record["inputs"][label]
        if resolve(record_path, str(entry.get("path"))) != _normal(path) or _changed(path, entry):
            return f"input changed: {path}"
    return None


def recorded_outputs(record_path):
    """{label: location} of a record's outputs, as seen from here; {} without a record."""
    record = read_record(record_path) or {"outputs": {}}
    return {label: resolve(record_path, entry["path"]) for label, entry in record["outputs"].items()}


def _relative(location, record_location):
    """location as seen from the record's directory (itself when they are not on one store)."""
    location, record_location = str(location), str(record_location)
    if storage.is_s3(location) != storage.is_s3(record_location):
        return location if storage.is_s3(location) else os.path.abspath(location)
    if storage.is_s3(location):
        bucket, _, key = location[len("s3://"):].partition("/")
        record_bucket, _, record_key = record_location[len("s3://"):].partition("/")
        return posixpath.relpath(key, posixpath.dirname(record_key)) if bucket == record_bucket else location
    return os.path.relpath(location, os.path.dirname(record_location))


def resolve(record_path, relative):
    """The location of a path a record holds (relative to the record's directory)."""
    record_path = str(record_path)
    if storage.is_s3(relative) or os.path.isabs(relative):
        return relative
    if storage.is_s3(record_path):
        bucket, _, key = record_path[len("s3://"):].partition("/")
        return f"s3://{bucket}/" + posixpath.normpath(posixpath.join(posixpath.dirname(key), relative))
    return os.path.abspath(os.path.join(os.path.dirname(record_path), relative))


def _normal(location):
    location = str(location)
    return location if storage.is_s3(location) else os.path.abspath(location)


def _changed(path, entry):
    try:
        return file_digest(path) != entry.get("sha256")
    except (OSError, TypeError):
        return True
