"""The one rule of trust: a file counts only while its bytes match the digest that the record
vouching for it holds.

A record is a small JSON file written by the task that made the files, after them. For each
output and each input it holds the location (relative to the record, so a tree keeps its
records when moved), the size, the sha256 and, on a bucket, the ETag the store computed from
the content when it was published. Checking a local file hashes it (once while its stat
identity is unchanged); checking an object compares the store's size and ETag (HEAD or LIST,
no download); a downloaded object is hashed before use (storage.fetch). Nothing is trusted
for its name, its own attributes or an object's own metadata.

A checkpoint's record is written when the checkpoint is saved: <run>/lineage/checkpoints/.
A custom dataset's source files are inputs too: recorded with their stat identity, hashed
again when it changed.
"""

import datetime
import json
import os
from pathlib import Path

from pipeline import storage

FORMAT_VERSION = 2


def describe(path, stored=None):
    """The entry of a local file (and of its published copy, `stored`): sha256, size, etag."""
    entry = {"sha256": storage.file_sha256(path), "size": os.stat(path).st_size}
    if stored is not None and stored.etag:
        entry["etag"] = stored.etag
    return entry


def mismatch(location, entry, listed=None):
    """None while the file at location is the one `entry` describes, else "missing" or
    "changed or damaged". listed: {location: Stored} from a listing, to save a request."""
    if not isinstance(entry, dict):
        return "changed or damaged"
    found = listed[location] if listed is not None and location in listed else (
        None if listed is not None and storage.is_remote(location) else storage.stat(location))
    if found is None:
        return "missing"
    if found.size != entry.get("size"):
        return "changed or damaged"
    if storage.is_remote(location):
        return None if entry.get("etag") and found.etag == entry["etag"] else "changed or damaged"
    try:
        return None if storage.file_sha256(location) == entry.get("sha256") else "changed or damaged"
    except OSError:
        return "missing"


def read_verified(location, entry):
    """The bytes at location, when they are the ones entry vouches for (hashed here);
    StorageError otherwise."""
    import hashlib

    from pipeline.errors import StorageError

    content = storage.read_bytes(location)
    if hashlib.sha256(content).hexdigest() != entry.get("sha256"):
        raise StorageError(f"{location} does not match the digest its record holds: rerun to remake it")
    return content


def write_record(record_location, *, outputs, inputs, lease=None, **facts):
    """Write the record of outputs and inputs ({label: (location, entry)}) and any JSON-ready
    facts, whole, after the outputs themselves; returns it."""
    base = storage.parent(record_location)

    def entries(files):
        return {label: {**entry, "path": storage.relative_name(location, base)}
                for label, (location, entry) in files.items()}

    record = {
        "format_version": FORMAT_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "outputs": entries(outputs),
        "inputs": entries(inputs),
        **facts,
    }
    storage.write_bytes(record_location, json.dumps(record, indent=2) + "\n", lease=lease)
    return record


def read_record(record_location):
    """The record as written, or None when it is missing or not a record."""
    try:
        record = json.loads(storage.read_bytes(str(record_location)))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and all(isinstance(record.get(k), dict) for k in ("outputs", "inputs")) \
        and all(isinstance(e, dict) and isinstance(e.get("path"), str)
                for k in ("outputs", "inputs") for e in record[k].values())
    return record if ok else None


def files(record_location, record, part="outputs"):
    """{label: (location, entry)} of a record's outputs (or inputs), as seen from here."""
    base = storage.parent(record_location)
    return {label: (storage.resolve(base, entry["path"]), entry) for label, entry in record[part].items()}


def problem(record_location, inputs=None, record=None):
    """None when the record vouches for its outputs as they are now and was made from these
    inputs ({label: (location, entry)}, the entries their own records hold); otherwise why not,
    in a few words. inputs=None checks the outputs alone."""
    record = record if record is not None else read_record(record_location)
    if record is None:
        return "missing" if not storage.exists(str(record_location)) else f"its record {record_location} is unreadable"
    outputs = files(record_location, record)
    listed = _listed(record_location, [location for location, _ in outputs.values()])
    for location, entry in outputs.values():
        found = mismatch(location, entry, listed)
        if found:
            return f"{found}: {location}"
    if inputs is None:
        return None
    recorded = files(record_location, record, "inputs")
    if set(inputs) != set(recorded):
        return "made from other inputs"
    for label, (location, entry) in inputs.items():
        was_location, was = recorded[label]
        if _normal(was_location) != _normal(location) or was.get("sha256") != entry.get("sha256"):
            return f"input changed: {location}"
    return None


def _listed(record_location, locations):
    """{location: Stored} of every object under the record's tree, from one listing, when the
    outputs are in a bucket; None on a disk (a local stat is cheaper than a listing)."""
    if not storage.is_remote(record_location):
        return None
    tree = storage.parent(storage.parent(record_location))
    if not all(storage.relative(location, tree) is not None for location in locations):
        return None
    return {storage.join(tree, name): stored for name, stored in storage.listing(tree).items()}


def _normal(location):
    location = str(location)
    return location if storage.is_remote(location) else os.path.abspath(location)


# --- sources outside the pipeline's roots: a custom dataset's files ---

def source_entry(path, sha256):
    """What a source file was when its bytes (of this sha256) were read: its real path and stat
    identity. A file that changed since it was read is recorded as changed already."""
    real = os.path.realpath(path)
    st = os.stat(real)
    same = storage.file_sha256(real) == sha256
    return {"path": real, "size": st.st_size if same else -1, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino,
            "sha256": sha256}


def source_problem(entries, source_dir=None):
    """None while every recorded source file is as it was (same stat identity, or the same
    sha256 when it moved or was touched) and, given source_dir, they come from that directory
    however it is spelled; otherwise why not."""
    if source_dir is not None:
        wanted = os.path.realpath(source_dir)
        if any(os.path.dirname(e.get("path", "")) != wanted for e in entries.values()):
            return f"made from another source than --source-dir {source_dir}"
    for name, entry in entries.items():
        path = entry.get("path", "")
        try:
            st = os.stat(path)
        except OSError:
            return f"source missing: {path}"
        if (st.st_size, st.st_mtime_ns, st.st_ino) == (entry.get("size"), entry.get("mtime_ns"), entry.get("inode")):
            continue
        if st.st_size != entry.get("size") or storage.file_sha256(path) != entry.get("sha256"):
            return f"source changed: {path}"
    return None


def checkpoint_record(run_record_dir, name):
    """The location of the record written when checkpoint `name` (iter-*.h5) was saved."""
    return storage.join(run_record_dir, "checkpoints", Path(name).stem + ".json")
