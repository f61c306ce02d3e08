"""What each artifact was made from, recorded when it is made and checked before it is trusted.

A task's record (a small JSON file) holds the sha256 of every file it wrote and of every
file it read. Its outputs are complete only while both still match: a file changed,
damaged or replaced since, on either side, makes them stale.
"""

import datetime
import hashlib
import json
import os
from pathlib import Path

from pipeline.atomic import write_atomically

FORMAT_VERSION = 1
_digests = {}  # (path, stat identity) -> sha256, so a file is hashed once per process while unchanged


def file_digest(path):
    """sha256 of a file's bytes (hex); OSError when it cannot be read."""
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


def write_record(record_path, *, outputs, inputs, **facts):
    """Record outputs and inputs ({label: path}) with their digests, and any JSON-ready facts
    (e.g. seconds taken); written atomically, after the outputs themselves."""
    base = Path(record_path).parent

    def entries(files):  # paths relative to the record, so a moved tree keeps its records
        return {label: {"path": os.path.relpath(path, base), "sha256": file_digest(path)}
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
        record = json.loads(Path(record_path).read_text())
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
        return "missing" if not os.path.exists(record_path) else f"its record {record_path} is unreadable"
    if outputs is not None and set(outputs) != set(record["outputs"]):
        return "its record lists other outputs"
    base = Path(record_path).parent
    for entry in record["outputs"].values():
        path = base / str(entry.get("path"))
        if _changed(path, entry):
            return f"{'changed or damaged' if path.exists() else 'missing'}: {os.path.normpath(path)}"
    if inputs is None:
        return None
    if set(inputs) != set(record["inputs"]):
        return "made from other inputs"
    for label, path in inputs.items():
        entry = record["inputs"][label]
        if os.path.abspath(base / str(entry.get("path"))) != os.path.abspath(path) or _changed(path, entry):
            return f"input changed: {path}"
    return None


def recorded_outputs(record_path):
    """{label: path} of a record's outputs (paths as seen from here), {} without a record."""
    record = read_record(record_path) or {"outputs": {}}
    base = Path(record_path).parent
    return {label: Path(os.path.normpath(base / entry["path"])) for label, entry in record["outputs"].items()}


def _changed(path, entry):
    try:
        return file_digest(path) != entry.get("sha256")
    except (OSError, TypeError):
        return True
