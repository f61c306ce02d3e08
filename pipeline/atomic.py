"""Files that appear complete or not at all (write beside the target, flush, rename), and
locks that serialise processes working on the same files."""

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path in path's directory; on success it is fsynced and renamed to
    path (and the directory fsynced), on any exception it is removed. For writers such as
    h5py that want a file name. Permissions follow the umask, as for a plain open()."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        fsync_path(temporary)
        os.replace(temporary, path)
        fsync_path(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(path, data):
    """Write text (UTF-8) or bytes to path atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _umask():
    current = os.umask(0)
    os.umask(current)
    return current


def fsync_path(path):
    """Flush a file's data, or a directory's entries, to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def exclusive_lock(path):
    """Hold an exclusive lock on `path` (created if need be) for the block: other processes,
    here or on a shared filesystem that supports flock, wait until it is released. The
    lock goes with the process, so a killed holder never leaves it stuck."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def temporaries_of(path):
    """Temporary files that atomic_path leaves beside `path` when its process is killed;
    path's name may be a glob pattern (`dir / "iter-*.h5"`, `dir / "*"`)."""
    path = Path(path)
    return list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
