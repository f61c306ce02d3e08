"""Getting a dataset's four IDX files: from local directories, then mirrors, all verified.

Sources are tried in order for each file: `source_dir`, the configured local directories,
then each mirror. A file passes when any accepted hash matches: for the known datasets
the md5 or sha256 of the .gz as published, or the sha256 of the decompressed content
(so a recompressed copy, like Debian's, passes too). A custom dataset (any other name)
comes only from local directories; it has no known hashes, so its IDX structure is
validated and its hashes recorded, with a warning.

Mirrors are held to bounds: a byte limit and a deadline per file, redirects followed only
to http(s) URLs. Every file's gzip is decompressed within the limits of pipeline.idx.

Everything is staged in a temporary directory beside the destination and moved into
place only when all four files have passed; MANIFEST.json is written last. A failure
leaves the destination as it was.
"""

import datetime
import gzip
import hashlib
import http.client
import json
import math
import numbers
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import fsync_path
from pipeline.errors import DataError, DownloadError, ParameterError
from pipeline.logs import logger
from pipeline.idx import (GZIP_MAGIC, LABELS_MAGIC, check_counts, check_images, check_labels, idx_content,
                          parse_idx, read_limited)


FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class KnownDataset:
    mirrors: tuple
    hashes: dict  # file name -> accepted hex digests (md5 / sha256 of the .gz, sha256 of the content)
    sizes: dict  # file name -> bytes of the .gz as published
    train_size: int = 60000


# The published files' hashes (md5 and sha256 of the .gz, sha256 of the content).
KNOWN_DATASETS = {
    "mnist": KnownDataset(
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"),
        hashes={
            "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873",
                                           "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432",
                                           "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                                           "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
            "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3",
                                          "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                                          "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
            "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c",
                                          "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                                          "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        },
        sizes={"train-images-idx3-ubyte.gz": 9912422, "train-labels-idx1-ubyte.gz": 28881,
               "t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542},
    ),
    "fashion-mnist": KnownDataset(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        hashes={
            "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                           "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                                           "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",
                                           "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                                           "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",
                                          "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                                          "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",
                                          "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                                          "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        },
        sizes={"train-images-idx3-ubyte.gz": 26421880, "train-labels-idx1-ubyte.gz": 29515,
               "t10k-images-idx3-ubyte.gz": 4422102, "t10k-labels-idx1-ubyte.gz": 5148},
    ),
}

DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
CHUNK = 1 << 16
MAX_DOWNLOAD_BYTES = 64 << 20  # per file, when no published size applies (checksums given, custom datasets)
IMAGE_SHAPE = (28, 28)  # the network's 784 inputs
N_CLASSES = 10


def validate_dataset_name(name):
    """Dataset names become directory names under data/ and artifacts/: nothing that could climb
    out of them ('/', '..') or collide with a file beside them (runs.csv, index.html: no '.')."""
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise ParameterError(
            f"invalid dataset={name!r}: use mnist, fashion-mnist, or a custom name of lowercase letters, "
            f"digits, '_' and '-'")


def is_known(dataset):
    return dataset in KNOWN_DATASETS


def known_train_size(dataset):
    """Training images of a known dataset (60000 for both), None for a custom one."""
    return KNOWN_DATASETS[dataset].train_size if is_known(dataset) else None


def peek_train_size(source_dir):
    """The number of training images a dataset in source_dir holds, read from the 8-byte header of
    its train-labels-idx1-ubyte(.gz) (gzipped or not; the rest is not read), before any fetch; None
    when the file is absent, unreadable or not IDX labels. The fetch verifies the whole file later."""
    name = "train-labels-idx1-ubyte.gz"
    for path in (Path(source_dir) / name, Path(source_dir) / name[:-len(".gz")]):
        try:
            with open(path, "rb") as f:
                gzipped = f.read(2) == GZIP_MAGIC
                f.seek(0)
                header = (gzip.GzipFile(fileobj=f) if gzipped else f).read(8)
        except (OSError, EOFError, zlib.error):
            continue
        if len(header) == 8 and int.from_bytes(header[:4], "big") == LABELS_MAGIC:
            return int.from_bytes(header[4:], "big")
    return None


def default_mirrors(dataset):
    return list(KNOWN_DATASETS[dataset].mirrors) if is_known(dataset) else []


def load_raw_dataset(raw_dir, kind):
    """Read back the train and test files of one kind ("images" or "labels") of a fetched
    dataset: ({"train": array, "test": array}, {file name: sha256 of its content} for all four).

    Each file read is checked again against MANIFEST.json first, so a file changed or
    damaged since it was verified is refused (DataError naming it and the fix), never used.
    Kinds, sizes and counts were checked when the files were fetched, and the hash pins
    the content, so they are not checked again here.
    """
    raw_dir = Path(raw_dir)
    manifest_path = raw_dir / "MANIFEST.json"
    try:
        entries = json.loads(manifest_path.read_text())["files"]
        checksums = {name: entries[name]["content_sha256"] for name in FILES}
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{manifest_path} is unreadable or incomplete ({error}); delete {raw_dir} and rerun to "
                        f"fetch the dataset again") from None
    arrays = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        name = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
        path = raw_dir / entries[name]["stored_as"]
        try:
            content = idx_content(read_limited(path), str(path))
        except OSError as error:
            raise DataError(f"{path} is listed in {manifest_path} but cannot be read ({error.strerror}); "
                            f"delete {raw_dir} and rerun") from None
        digest = hashlib.sha256(content).hexdigest()
        if digest != checksums[name]:
            raise DataError(f"{path} does not match {manifest_path} (content sha256 {digest[:12]}..., the manifest "
                            f"says {checksums[name][:12]}...): it changed after it was verified; "
                            f"delete {raw_dir} and rerun to fetch it again")
        arrays[part] = parse_idx(content, str(path))
    return arrays, checksums


def staging_directories(dest_dir):
    """Staging directories that fetch_dataset leaves beside dest_dir when killed."""
    dest_dir = Path(dest_dir)
    return list(dest_dir.parent.glob(f".{dest_dir.name}.*.partial")) if dest_dir.parent.is_dir() else []


def fetch_dataset(dataset, dest_dir, *, source_dir=None, local_dirs=(), mirrors=(), checksums=None,
                  timeout=30.0, deadline=None, retries=3, backoff=1.0, progress=None):
    """Put the dataset's four files, verified, and MANIFEST.json into dest_dir; return the manifest.

    checksums: {file name: [hex digests]} replacing the known hashes (private mirrors, tests).
    timeout: seconds one read from a mirror may wait. deadline: seconds one file may take
    from one mirror, tries included (default 10 x timeout); a mirror past it is dropped.
    A body is cut off past the published size of the file plus 1/8 and 64 KiB (room for a
    recompressed copy), or past MAX_DOWNLOAD_BYTES when checksums are given.
    progress(fraction, message): called as bytes arrive, for a person watching.
    Raises ParameterError for a bad setting before any source is tried, DownloadError
    naming every source tried for a file and why each failed.
    """
    validate_dataset_name(dataset)
    deadline = 10 * timeout if deadline is None and _is_seconds(timeout) else deadline
    _validate_settings(timeout=timeout, deadline=deadline, retries=retries, backoff=backoff)
    dest_dir = Path(dest_dir)
    limits = _byte_limits(dataset, checksums)
    accepted = _accepted_hashes(dataset, checksums)
    if accepted is None:
        logger.warning("%s is a custom dataset: no known checksums, so its files are only checked as IDX "
                       "and their hashes recorded in MANIFEST.json", dataset)
    sources = _sources(dataset, source_dir, local_dirs, mirrors)
    if not sources:
        raise DownloadError(f"no source for dataset {dataset!r}: a custom dataset needs source_dir or local_dirs "
                            f"holding its four IDX files ({', '.join(FILES)})")

    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".partial", dir=dest_dir.parent))
    try:
        entries, unreachable = {}, {}
        for number, name in enumerate(FILES):
            def file_progress(fraction, message, number=number):
                if progress is not None:
                    progress((number + fraction) / len(FILES), message)

            network = _Network(timeout, deadline, retries, backoff, limits[name])
            entries[name] = _fetch_file(name, sources, accepted, staging, network, file_progress, unreachable)
        manifest = {
            "dataset": dataset,
            "created_at": _now(),
            "verified_with": "known checksums" if accepted is not None else "IDX structure only (custom dataset)",
            "files": entries,
        }
        _check_counts(entries)
        _install(staging, dest_dir, manifest)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_seconds(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _validate_settings(timeout, deadline, retries, backoff):
    """ParameterError naming the first download setting out of range and what is allowed."""
    if not isinstance(retries, numbers.Integral) or isinstance(retries, bool) or retries < 1:
        raise ParameterError(f"retries={retries!r} is not allowed: give the number of tries per file and mirror, "
                             f"a whole number of 1 or more")
    for name, value in (("timeout", timeout), ("deadline", deadline)):
        if not _is_seconds(value):
            raise ParameterError(f"{name}={value!r} is not allowed: give a number of seconds above 0")
    if not (_is_seconds(backoff) or backoff == 0):
        raise ParameterError(f"backoff={backoff!r} is not allowed: give a number of seconds, 0 or more")


@dataclass(frozen=True)
class _Network:
    """How one file is downloaded: per-read timeout, whole-file deadline, tries, backoff, byte limit."""
    timeout: float
    deadline: float
    retries: int
    backoff: float
    limit: int


def _byte_limits(dataset, checksums):
    """{file name: most bytes accepted from a mirror}: the published size plus room for a
    recompressed copy (gzip -1 is some 3 % larger), or MAX_DOWNLOAD_BYTES when the
    checksums are not the published ones."""
    if checksums or not is_known(dataset):
        return dict.fromkeys(FILES, MAX_DOWNLOAD_BYTES)
    return {name: size + size // 8 + (64 << 10) for name, size in KNOWN_DATASETS[dataset].sizes.items()}


def _accepted_hashes(dataset, checksums):
    if checksums:
        return {name: {str(h).lower() for h in (hashes if not isinstance(hashes, str) else [hashes])}
                for name, hashes in checksums.items()}
    if is_known(dataset):
        return {name: set(hashes) for name, hashes in KNOWN_DATASETS[dataset].hashes.items()}
    return None


def _sources(dataset, source_dir, local_dirs, mirrors):
    """[(kind, location)] in the order they are tried. A custom dataset gets no mirrors:
    nothing vouches for what a server would send under a name we do not know."""
    sources = [("dir", Path(source_dir))] if source_dir else []
    sources += [("dir", Path(str(d).format(dataset=dataset))) for d in local_dirs]
    if is_known(dataset):
        sources += [("url", str(m).rstrip("/") + "/") for m in mirrors]
    elif mirrors:
        logger.warning("%s is a custom dataset: it is only taken from local directories, so the mirrors %s "
                       "are not tried", dataset, ", ".join(map(str, mirrors)))
    return sources


def _fetch_file(name, sources, accepted, staging, network, progress, unreachable):
    """Try each source for one file; return its manifest entry or raise DownloadError.

    unreachable: {mirror: reason} of mirrors that failed to answer for an earlier file;
    they are not tried again in this fetch (an offline machine would otherwise wait
    out every timeout and retry once per file).
    """
    failures = []
    for kind, location in _attempts(name, sources):
        where = str(location) if kind in ("file", "missing") else location + name
        skipped = ("not found (neither .gz nor plain IDX)" if kind == "missing" else
                   f"not tried ({unreachable[location]} for an earlier file)" if location in unreachable else None)
        if skipped:
            failures.append(f"{where}: {skipped}")
            logger.info("%s", failures[-1])
            continue
        path = location if kind == "file" else staging / (name + ".download")
        try:
            if kind == "url":
                _download(where, path, network, progress)
            raw = read_limited(path, "the file")
            entry = _verify(raw, name, accepted)
        except MirrorDown as error:
            unreachable[location] = str(error)
            failures.append(f"{where}: {error}")
        except (DataError, DownloadError, OSError) as error:
            failures.append(f"{where}: {error}")
        else:
            stored_as = name if entry["gzipped"] else name[:-len(".gz")]
            # Store the very bytes that were hashed: a local file rewritten meanwhile cannot slip in.
            (staging / stored_as).write_bytes(raw)
            fsync_path(staging / stored_as)
            if kind == "url":
                path.unlink()
            logger.info("%s: verified (%s) from %s", name, entry["verified_by"], where)
            return {**entry, "stored_as": stored_as, "source": where, "fetched_at": _now()}
        if kind == "url":
            path.unlink(missing_ok=True)  # a refused body does not wait on disk for the end of the fetch
        logger.info("%s", failures[-1])
    raise DownloadError(f"could not get a verified {name} from any source:\n  " + "\n  ".join(failures)
                        + "\nWithout network access, put the four files (.gz or plain IDX) in a directory and "
                          "pass --source-dir DIR, or list it in [sources] local_dirs in luigi.cfg")


class MirrorDown(DownloadError):
    """The mirror did not answer properly at all (no connection, timeouts, 5xx)."""


def _attempts(name, sources):
    """(kind, location) of each try for one file: ("file", path) for each copy a local
    directory holds (the .gz, then the plain IDX: a damaged .gz does not hide a good plain
    file beside it), ("missing", dir / name) for a directory with neither, ("url", base)."""
    for kind, location in sources:
        if kind == "url":
            yield kind, location
            continue
        found = [p for p in (location / name, location / name[:-len(".gz")]) if p.is_file()]
        yield from ([("file", p) for p in found] if found else [("missing", location / name)])


def _download(url, path, network, progress):
    """GET url into path, retrying transient failures (timeouts, resets, 5xx, short bodies)
    until network.deadline has passed since the first try."""
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"unsupported URL scheme (http and https only): {url}")
    end = time.monotonic() + network.deadline
    retries = network.retries
    for attempt in range(1, retries + 1):
        try:
            return _get(url, path, network, end, progress)
        except urllib.error.HTTPError as error:
            if error.code < 500:
                raise DownloadError(f"HTTP {error.code} {error.reason}") from None
            reason = f"HTTP {error.code} {error.reason}"
        except (urllib.error.URLError, socket.gaierror, ConnectionRefusedError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, (TimeoutError, socket.timeout)) and time.monotonic() >= end:
                raise _too_slow(network, _size(path)) from None
            if not isinstance(reason, (TimeoutError, socket.timeout, ConnectionResetError)):
                raise MirrorDown(f"cannot connect ({reason})") from None
        except (TimeoutError, socket.timeout):
            if time.monotonic() >= end:
                raise _too_slow(network, _size(path)) from None
            reason = f"timed out after {network.timeout:g} s"
        except (ConnectionResetError, http.client.IncompleteRead, http.client.RemoteDisconnected) as error:
            reason = f"connection broken ({type(error).__name__})"
        if attempt < retries:
            delay = network.backoff * 2 ** (attempt - 1)
            if time.monotonic() + delay >= end:
                raise MirrorDown(f"{reason} ({attempt} of {retries} tries: the deadline of {network.deadline:g} s "
                                 f"left no time for more)")
            logger.info("%s: %s; retry %d of %d in %.1f s", url, reason, attempt, retries - 1, delay)
            time.sleep(delay)
    raise MirrorDown(f"{reason} ({retries} tries)")


def _size(path):
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _too_slow(network, received):
    return MirrorDown(f"not done within the deadline of {network.deadline:g} s ({received:,} bytes received); "
                      f"on a slow link raise the deadline (by default 10 x the timeout)")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an http or https URL: a Location of ftp:, file: or any
    other scheme is refused (DownloadError), never opened."""

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location:
            target = urllib.parse.urljoin(req.full_url, location)
            if urllib.parse.urlparse(target).scheme not in ("http", "https"):
                fp.close()
                raise DownloadError(f"redirected (HTTP {code}) to {target}: refused, only http and https URLs "
                                    f"are followed; remove this mirror or give its final http(s) URL")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def _get(url, path, network, end, progress):
    """One GET of url into path, no more than network.limit bytes and not past `end`
    (time.monotonic()); each read waits at most the timeout or the time left. The body
    must start with the gzip magic: an error page served with status 200 is refused
    here, before a byte of it is hashed or parsed."""
    left = end - time.monotonic()
    if left <= 0:
        raise _too_slow(network, 0)
    request = urllib.request.Request(url, headers={"User-Agent": "mnist-pipeline"})
    with _OPENER.open(request, timeout=min(network.timeout, left)) as response, open(path, "wb") as out:
        total = _content_length(response)
        if total > network.limit:
            raise DownloadError(f"the response announces {total:,} bytes, more than the {network.limit:,} accepted "
                                f"for this file; not downloaded")
        received, reported, head = 0, -1, b""
        while True:
            chunk = response.read1(CHUNK)  # what has arrived: a dripping body cannot hold the loop past `end`
            if not chunk:
                break
            if len(head) < 40:  # the body's first bytes, gathered over reads (a first read may be 1 byte)
                head += chunk[:40 - len(head)]
                _refuse_unless_gzip(head, complete=False)
            received += len(chunk)
            if received > network.limit:
                raise DownloadError(f"the body went on past {network.limit:,} bytes, the most accepted for this "
                                    f"file; cut off there")
            out.write(chunk)
            if time.monotonic() > end:
                raise _too_slow(network, received)
            if total:
                percent = 100 * received // total
                if percent // 10 != reported // 10:
                    reported = percent
                    progress(received / total, f"{url}: {received:,} of {total:,} bytes ({percent}%)")
            elif received // UNSIZED_REPORT != reported:
                reported = received // UNSIZED_REPORT
                progress(0.0, f"{url}: {received:,} bytes (size not announced)")
        _refuse_unless_gzip(head, complete=True)
        if total and received != total:
            raise http.client.IncompleteRead(b"", total - received)


UNSIZED_REPORT = 4 << 20  # bytes between progress messages when the server sends no Content-Length


def _content_length(response):
    """The announced body size, or 0 when it is missing or not a number."""
    try:
        return max(int(response.headers.get("Content-Length") or 0), 0)
    except ValueError:
        return 0


def _refuse_unless_gzip(start, complete):
    """DownloadError unless `start` (the first bytes of a body) is, or may still become, the gzip magic."""
    if start.startswith(GZIP_MAGIC) or (not complete and GZIP_MAGIC.startswith(start)):
        return
    if not start:
        raise DownloadError("empty response body, not a gzip file")
    shown = start.decode("latin-1").strip().splitlines()[0] if start.strip() else ""
    raise DownloadError(f"not a gzip file (the body starts {shown!r}); the mirror may serve an error page")


def _verify(raw, name, accepted):
    """Hashes of the file's bytes and of its IDX content; DataError when the IDX is damaged,
    is not what a file of this name must hold, or no accepted hash matches. (Callers prefix
    the source, so messages do not repeat it.)"""
    content = idx_content(raw, "the file")
    array = parse_idx(content, "the file")
    _check_kind(array, name)
    entry = {
        "gzipped": raw.startswith(GZIP_MAGIC),
        "size": len(raw),
        "shape": list(array.shape),
        "md5": hashlib.md5(raw).hexdigest(),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "content_sha256": hashlib.sha256(content).hexdigest(),
    }
    if accepted is None:
        return {**entry, "verified_by": "none: custom dataset"}
    wanted = accepted.get(name, set())
    for key, label in (("md5", "md5 of the file"), ("sha256", "sha256 of the file"),
                       ("content_sha256", "sha256 of the decompressed content")):
        if entry[key] in wanted:
            return {**entry, "verified_by": label}
    raise DataError(f"checksum mismatch (md5 {entry['md5']}, content sha256 {entry['content_sha256']} "
                    f"match none of the {len(wanted)} known hashes)")


def _check_kind(array, name):
    """DataError unless the array is what a file of this name holds: images (n, 28, 28),
    the network's 784 inputs, or labels (n,) in 0-9."""
    if "-images-" not in name:
        check_labels(array, n_classes=N_CLASSES)
        return
    check_images(array)
    if array.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"images are {array.shape[1]}x{array.shape[2]} pixels; the network needs "
                        f"{IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}")


def _check_counts(entries):
    """DataError unless each part holds images, as many as its labels (from their shapes)."""
    for prefix, part in (("train", "training"), ("t10k", "test")):
        images, labels = entries[f"{prefix}-images-idx3-ubyte.gz"], entries[f"{prefix}-labels-idx1-ubyte.gz"]
        if images["shape"][0] == 0:
            raise DataError(f"{images['source']} holds 0 images: a dataset needs {part} images; put a file "
                            f"holding at least one there, and its labels beside it")
        check_counts(images["shape"][0], labels["shape"][0], images["source"], labels["source"])


def _install(staging, dest_dir, manifest):
    dest_dir.mkdir(parents=True, exist_ok=True)
    # An older manifest must not vouch for the files about to replace the ones it describes.
    (dest_dir / "MANIFEST.json").unlink(missing_ok=True)
    for entry in manifest["files"].values():
        os.replace(staging / entry["stored_as"], dest_dir / entry["stored_as"])
    temporary = staging / "MANIFEST.json"
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    fsync_path(temporary)
    os.replace(temporary, dest_dir / "MANIFEST.json")  # last: its presence means complete
    fsync_path(dest_dir)  # the renames themselves survive a power cut


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
