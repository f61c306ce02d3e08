"""What the data and the runs take, and what may be removed without losing a result, on a
disk and in a bucket alike.

    found = survey("artifacts", "data", cache_dir="cache")  # or bucket locations
    print(format_usage(usage(found)))
    items = plan(found, keep_runs=5, checkpoints=True)
    print(format_plan(items)); remove(items)

gc acts only in roots the pipeline made (they hold storage.MARKER; a root with anything else
in it is refused with a ParameterError, an empty or missing one is skipped) and only on names
the pipeline writes there. plan() proposes, remove() removes:
- temporaries of killed writes (`.<name>.<8 random>.tmp`, as atomic_path makes them) in the
  pipeline's own directories (raw/<dataset>, processed/<dataset>, run and sweep directories
  and their subdirectories, the root's own files) and download staging directories
  (raw/.<dataset>.<8 random>.partial);
- unfinished or failed runs: run directories that lineage/EvaluateNetwork.json does not vouch
  for (with their row of runs.csv, if any);
- with keep_runs=N, the finished runs beyond the N most recent by runs.csv's finished_at (over
  all datasets; ties in runs.csv's order): their directory and their row, which is dropped
  first (runs.drop_runs, index.html rewritten);
- a sweep directory once none of the runs it compares remains (a sweep one of whose runs
  remains is kept whole);
- with checkpoints=True, every checkpoint of a finished run but its last recorded one, and
  their records (lineage/checkpoints/iter-*.json). lineage/TrainNetwork.json is rewritten
  without them first (every other entry as it was, the removal noted under "removed_by_gc"),
  so nothing reruns; model.h5 holds the weights and every epoch's figures;
- multipart uploads under a bucket root never completed and started over `min_age` ago;
- stale locks in <root>/.locks: a lease object whose expiry passed more than its ttl ago, a
  local lease file no process holds (removed under the lock, as Lease.release does). The
  `*.lock` files of exclusive_lock (runs.csv's) are kept: removing them is not safe;
- with a cache_dir (a worker's, local): objects/<sha256>/<name> not used (fetched or reused)
  for cache_days days (0: all of them), and the data-*/artifacts-* working copies in which
  nothing changed for min_age seconds. Run it when no worker uses that cache_dir.

Held locks: a local lock file some process holds (flock), a lease object whose expiry lies
ahead. While any lock of a root is held a pipeline is at work there: its unfinished runs,
temporaries and staging directories are kept. Finished runs whose own task locks are held
(named by their run id, see run_task_ids) are kept as they are, and no old
run or sweep goes while a Sweep's lock is held. The notes of the plan say what was kept and why.
Checks happen when planning; nothing is locked until remove().
"""

import bisect
import datetime
import json
import os
import re
import time
from dataclasses import dataclass

from pipeline import lineage, runs, storage
from pipeline.errors import ParameterError

HOUR = 3600.0
DAY = 86400.0
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's names: 8 of these characters
DATASET = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
TEMPORARY = re.compile(rf"^\.(?P<name>.+)\.{_RANDOM}\.tmp$")
STAGING = re.compile(rf"^\.(?P<dataset>[a-z0-9][a-z0-9_-]{{0,63}})\.{_RANDOM}\.partial$")
RUN_NAME = re.compile(r"^h\d+-b\d+-lr[0-9.e+-]+-s\d+(-\d{4}-\d{2}-\d{2})?-[0-9a-f]{8}$")
SWEEP_NAME = re.compile(r"^sweep-[0-9a-f]{8}$")
CHECKPOINT = re.compile(r"^iter-(\d+)\.h5$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
WORKING_COPY = re.compile(r"^(data|artifacts)-[0-9a-f]{12}$")
LOCK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")  # task ids, index.html, runs.csv.lock
ROOT_FILES = (storage.MARKER, "runs.csv", "index.html")
RUN_TASKS = ("CheckGradient", "TrainNetwork", "EvaluateNetwork")
AT_WORK = ("unfinished-run", "temporary", "staging")  # kept while a lock of their root is held
FIRST_RECORDS = ("lineage/EvaluateNetwork.json", "lineage/Sweep.json")  # removed first: no record outlives its files


@dataclass(frozen=True)
class Item:
    """One thing plan() proposes to remove: a file, a directory or an upload at `location`, its
    bytes, its kind (temporary, staging, unfinished-run, old-run, sweep, checkpoint, upload,
    lock, cached-object, working-copy) and why it may go. objects: the files (locations) it is
    made of; the other fields serve remove()."""

    location: str
    bytes: int
    kind: str
    reason: str
    objects: tuple = ()
    root: str = ""
    run_id: str = ""
    record: str = ""
    label: str = ""
    upload: tuple = ()


class Plan(list):
    """The Items of a plan, and `notes`: what was left alone and why."""

    def __init__(self, items=(), notes=()):
        super().__init__(items)
        self.notes = list(notes)


@dataclass(frozen=True)
class UsageRow:
    """Bytes under one location: kind is data, run, sweeps, cache, other or total; state says
    more (finished, unfinished) where it applies."""

    kind: str
    dataset: str
    name: str
    location: str
    bytes: int
    state: str = ""


# --- what is there ---

class Tree:
    """Every file under a root, read once: {name: Stored} (`/`-separated names; on a disk
    temporaries and symbolic links included, with their own size), its locks and whether
    they are held."""

    def __init__(self, location, now):
        self.location = storage.parse(location)
        self.files = storage.inventory(self.location)
        self._names = sorted(self.files)
        self.listed = {self.where(name): stored for name, stored in self.files.items()}
        self.locks = _locks(self.location, self.files, now)
        self.held = sorted(lock.name for lock in self.locks if lock.held)

    def where(self, name):
        return storage.join(self.location, name)

    def under(self, prefix):
        """{name: Stored} of the files below prefix/ (a range of the sorted names)."""
        prefix = prefix.rstrip("/") + "/"
        start = bisect.bisect_left(self._names, prefix)
        end = bisect.bisect_left(self._names, prefix[:-1] + chr(ord("/") + 1), start)
        return {name: self.files[name] for name in self._names[start:end]}

    def size(self, prefix):
        return sum(stored.size for stored in self.under(prefix).values())


@dataclass(frozen=True)
class Lock:
    name: str
    location: str
    held: bool
    stale: bool
    bytes: int
    why: str = ""


def _locks(root, files, now):
    """The Locks in root/.locks/ (direct children only), of files ({name: Stored} under root)."""
    found = []
    for name, stored in files.items():
        parts = name.split("/")
        if len(parts) != 2 or parts[0] != ".locks" or not LOCK_NAME.match(parts[1]):
            continue
        location = storage.join(root, name)
        state = storage.lock_state(location, now)
        found.append(Lock(parts[1], location, state.held, state.stale, stored.size, state.why))
    return found


def _utc(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def run_task_ids(row):
    """The names of the leases of a run's CheckGradient, TrainNetwork and EvaluateNetwork."""
    return [runs.lock_name(family, row["dataset"], row["run_id"]) for family in RUN_TASKS]


@dataclass
class Run:
    dataset: str
    run_id: str
    finished: bool
    why: str  # why it is not finished


class Survey:
    """What is under the roots (and in a cache_dir), read once for usage() and plan()."""

    def __init__(self, artifacts_dir, data_dir, cache_dir=None, now=None):
        self.now = time.time() if now is None else now
        self.notes = []
        self.artifacts = self._root(artifacts_dir, "artifacts_dir")
        self.data = self._root(data_dir, "data_dir")
        self.cache = None if cache_dir is None else _local_cache(cache_dir)
        self.runs = []
        if self.artifacts is not None:
            run_ids = sorted({tuple(name.split("/")[:2]) for name in self.artifacts.files
                              if name.count("/") >= 2 and DATASET.match(name.split("/")[0])
                              and RUN_NAME.match(name.split("/")[1])})
            for dataset, run_id in run_ids:
                why = _vouches(self.artifacts, f"{dataset}/{run_id}/lineage/EvaluateNetwork.json")
                self.runs.append(Run(dataset, run_id, why is None, why or ""))

    def _root(self, location, what):
        location = storage.parse(location, what)
        tree = Tree(location, self.now)
        if not tree.files:
            self.notes.append(f"{location} holds nothing")
            return None
        if storage.MARKER not in tree.files:
            raise ParameterError(f"{location} has no {storage.MARKER} marker: gc acts only in roots the pipeline "
                                 f"made; give the {what} the pipeline writes to (one it made before markers "
                                 f"existed: create {storage.MARKER} in it first)")
        return tree


def survey(artifacts_dir, data_dir, cache_dir=None, *, now=None):
    """A Survey of both roots (locations) and of cache_dir; ParameterError for a root that holds
    files but not storage.MARKER."""
    return Survey(artifacts_dir, data_dir, cache_dir, now)


def _vouches(tree, record_name):
    """None when the record at record_name vouches for its outputs as they are in tree; else why not."""
    if record_name not in tree.files:
        return "no record"
    location = tree.where(record_name)
    record = lineage.read_record(location)
    if record is None:
        return "its record is unreadable"
    for output, entry in lineage.files(location, record).values():
        found = lineage.mismatch(output, entry, tree.listed)
        if found:
            return f"{found}: {output}"
    return None


def _local_cache(cache_dir):
    return storage.local_directory(cache_dir, "cache_dir")


# --- sizes ---

def human_size(n):
    """`512 B`, `3.4 kB`, `1.2 MB`, `5.0 GB` (powers of 1000)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 999.95 or unit == "TB":
            return f"{n:.1f} {unit}"


def _disk_bytes(path):
    """Bytes of the files under path, each inode once (working copies hard-link the cache)."""
    seen, total = set(), 0
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def usage(found):
    """[UsageRow] of a Survey: each dataset's data (raw and processed), each run, each dataset's
    sweeps, the rest of each root, the cache, then totals."""
    rows, totals = [], {}
    data, artifacts = found.data, found.artifacts
    if data is not None:
        datasets = sorted({name.split("/")[1] for name in data.files
                           if name.split("/")[0] in ("raw", "processed") and name.count("/") >= 2
                           and DATASET.match(name.split("/")[1])})
        counted = 0
        for dataset in datasets:
            size = data.size(f"raw/{dataset}") + data.size(f"processed/{dataset}")
            counted += size
            rows.append(UsageRow("data", dataset, "raw + processed", data.location, size))
        totals["data"] = sum(stored.size for stored in data.files.values())
        if totals["data"] > counted:
            rows.append(UsageRow("other", "", "locks, staging, temporaries, ...", data.location,
                                 totals["data"] - counted))
    if artifacts is not None:
        counted = 0
        for run in found.runs:
            size = artifacts.size(f"{run.dataset}/{run.run_id}")
            counted += size
            rows.append(UsageRow("run", run.dataset, run.run_id, artifacts.where(f"{run.dataset}/{run.run_id}"),
                                 size, "finished" if run.finished else "unfinished"))
        for dataset, sweeps in sorted(_sweeps(artifacts).items()):
            size = sum(artifacts.size(f"{dataset}/sweeps/{sweep}") for sweep in sweeps)
            counted += size
            rows.append(UsageRow("sweeps", dataset, f"{len(sweeps)} sweeps", artifacts.where(f"{dataset}/sweeps"),
                                 size))
        totals["artifacts"] = sum(stored.size for stored in artifacts.files.values())
        if totals["artifacts"] > counted:
            rows.append(UsageRow("other", "", "runs.csv, index.html, locks, ...", artifacts.location,
                                 totals["artifacts"] - counted))
    if found.cache is not None and found.cache.is_dir():
        objects = found.cache / "objects"
        cached = [p for p in objects.glob("*/*") if SHA256.match(p.parent.name) and p.is_file()] \
            if objects.is_dir() else []
        rows.append(UsageRow("cache", "", f"{len(cached)} objects", str(objects),
                             sum(p.lstat().st_size for p in cached)))
        for copy in sorted(p for p in found.cache.iterdir() if WORKING_COPY.match(p.name) and p.is_dir()):
            rows.append(UsageRow("cache", "", "working copy", str(copy), _disk_bytes(copy)))
        totals["cache"] = _disk_bytes(found.cache)
    for name, size in totals.items():
        location = {"data": data, "artifacts": artifacts}.get(name)
        rows.append(UsageRow("total", "", name, location.location if location else str(found.cache), size))
    rows.append(UsageRow("total", "", "all", "", sum(totals.values())))
    return rows


def _sweeps(tree):
    """{dataset: [sweep ids]} of the sweep directories in an artifacts tree."""
    found = {}
    for name in tree.files:
        parts = name.split("/")
        if len(parts) >= 4 and DATASET.match(parts[0]) and parts[1] == "sweeps" and SWEEP_NAME.match(parts[2]):
            found.setdefault(parts[0], set()).add(parts[2])
    return {dataset: sorted(sweeps) for dataset, sweeps in found.items()}


# --- the plan ---

def plan(found, keep_runs=None, checkpoints=False, *, cache_days=None, min_age=HOUR):
    """A Plan (a list of Item) of what may be removed from a Survey; it only reads.
    keep_runs=N also proposes the finished runs beyond the N most recent; checkpoints=True the
    checkpoints of finished runs but the last; cache_days=D (with the survey's cache_dir) the
    cached objects not used for D days. min_age: seconds an upload or a working copy must have
    been left alone. See the module's docstring for the rules."""
    if keep_runs is not None and (isinstance(keep_runs, bool) or not isinstance(keep_runs, int) or keep_runs < 0):
        raise ParameterError(f"invalid keep_runs={keep_runs!r}: must be a whole number >= 0")
    if cache_days is not None and not (isinstance(cache_days, (int, float)) and cache_days >= 0):
        raise ParameterError(f"invalid cache_days={cache_days!r}: must be a number of days >= 0")
    items, notes = [], list(found.notes)
    artifacts, data = found.artifacts, found.data
    for tree in (artifacts, data):
        if tree is not None and tree.held:
            notes.append(f"{len(tree.held)} lock(s) in {tree.where('.locks')} are held ({', '.join(tree.held)}): "
                         f"a pipeline is at work, so unfinished runs, temporaries and staging directories under "
                         f"{tree.location} are kept")
    if artifacts is not None:
        items += _run_items(found, artifacts, keep_runs, checkpoints, notes)
    for tree in (data, artifacts):
        if tree is None:
            continue
        going = [item.location for item in items]
        if not tree.held:
            items += [item for item in _temporaries(tree) if not any(_below(item.location, g) for g in going)]
        items += _uploads(tree, found.now, min_age)
        items += [Item(lock.location, lock.bytes, "lock", f"stale: {lock.why}", (lock.location,), tree.location)
                  for lock in tree.locks if lock.stale]
    if found.cache is not None and cache_days is not None:
        items += _cache_items(found.cache, found.now, cache_days, min_age)
    unique = {}
    for item in items:  # one root given as both data_dir and artifacts_dir
        unique.setdefault((item.location, item.kind), item)
    return Plan(unique.values(), notes)


def _below(location, directory):
    return location == directory or location.startswith(directory.rstrip("/") + "/")


def _dir_item(tree, prefix, kind, reason, **fields):
    names = sorted(tree.under(prefix), key=lambda name: (name[len(prefix) + 1:] not in FIRST_RECORDS, name))
    return Item(tree.where(prefix), tree.size(prefix), kind, reason, tuple(tree.where(n) for n in names),
                tree.location, **fields)


def _run_items(found, tree, keep_runs, checkpoints, notes):
    items, going = [], set()
    rows = {row["run_id"]: (row["finished_at"], index, row) for index, row in enumerate(runs.read_runs(tree.location))}
    for run in found.runs:
        if run.finished or tree.held:
            continue
        prefix = f"{run.dataset}/{run.run_id}"
        lost = sum(1 for name in tree.under(f"{prefix}/checkpoints") if CHECKPOINT.match(name.rsplit("/", 1)[1]))
        failed = " (gradient check failed)" if f"{prefix}/gradient_check.failed.json" in tree.files else ""
        items.append(_dir_item(tree, prefix, "unfinished-run",
                               f"unfinished{failed}: no report to trust ({run.why})"
                               + (f"; {lost} checkpoint(s) of its training go with it" if lost else ""),
                               run_id=run.run_id))
        going.add(run.run_id)

    finished = [run for run in found.runs if run.finished]
    busy = _busy(finished, rows, tree.held, notes)
    sweeping = [name for name in tree.held if name.startswith("Sweep_")]
    if keep_runs is not None:
        ranked = sorted((run for run in finished if run.run_id in rows), key=lambda run: rows[run.run_id][:2],
                        reverse=True)
        for run in finished:
            if run.run_id not in rows:
                notes.append(f"{tree.where(run.dataset + '/' + run.run_id)}: finished but not in runs.csv, so it "
                             f"cannot be ranked; kept")
        if sweeping and ranked[keep_runs:]:
            notes.append(f"a Sweep is running ({', '.join(sweeping)}) and may read any report: no old run is removed")
        else:
            for rank, run in enumerate(ranked[keep_runs:], keep_runs + 1):
                if run.run_id in busy:
                    continue
                items.append(_dir_item(tree, f"{run.dataset}/{run.run_id}", "old-run",
                                       f"finished {rows[run.run_id][0]}, the {_ordinal(rank)} most recent of "
                                       f"{len(ranked)} (keeping {keep_runs}); its row of runs.csv goes too",
                                       run_id=run.run_id))
                going.add(run.run_id)
    if not sweeping:
        items += _orphaned_sweeps(tree, {run.run_id for run in found.runs} - going)
    if checkpoints:
        for run in finished:
            if run.run_id not in going and run.run_id not in busy:
                items += _spare_checkpoints(tree, f"{run.dataset}/{run.run_id}")
    return items


def _busy(finished, rows, held, notes):
    """Run ids of finished runs a held lock may belong to: their own task locks, or any held
    lock when the run has no row to name its tasks by."""
    if not held:
        return set()
    busy = set()
    for run in finished:
        try:
            mine = set(run_task_ids(rows[run.run_id][2])) & set(held)
        except (KeyError, ValueError, TypeError):
            mine = set(held)  # cannot name its locks: keep it
        if mine:
            busy.add(run.run_id)
            notes.append(f"{run.run_id}: a task of this run may hold a lock ({', '.join(sorted(mine))}); kept as it is")
    return busy


def _ordinal(n):
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _orphaned_sweeps(tree, remaining):
    items = []
    for dataset, sweeps in sorted(_sweeps(tree).items()):
        for sweep in sweeps:
            run_ids = sweep_run_ids(tree, f"{dataset}/sweeps/{sweep}")
            if run_ids and not set(run_ids) & remaining:
                items.append(_dir_item(tree, f"{dataset}/sweeps/{sweep}", "sweep",
                                       f"compares {len(run_ids)} runs, none of which remains"))
    return items


def sweep_run_ids(tree, prefix):
    """The run ids a sweep compares: its lineage record's inputs, else summary.csv's run_id
    column; [] when neither tells (the sweep is then kept)."""
    import csv
    import io

    record = lineage.read_record(tree.where(f"{prefix}/lineage/Sweep.json"))
    if record and record["inputs"]:
        return sorted(record["inputs"])
    try:
        text = storage.read_bytes(tree.where(f"{prefix}/summary.csv")).decode("utf-8")
        return sorted(row["run_id"] for row in csv.DictReader(io.StringIO(text)) if row.get("run_id"))
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return []


def _spare_checkpoints(tree, run):
    """Items for a finished run's checkpoints (and their records) but its last recorded one,
    when TrainNetwork's record still vouches for its outputs (else TrainNetwork reruns anyway)."""
    record_name = f"{run}/lineage/TrainNetwork.json"
    if _vouches(tree, record_name) is not None:
        return []
    record_location = tree.where(record_name)
    recorded = {}
    for label, (location, _) in lineage.files(record_location, lineage.read_record(record_location)).items():
        match = CHECKPOINT.match(label.rsplit("/", 1)[-1])
        here = storage.relative(location, tree.location) == f"{run}/{label}"
        if match and label.startswith("checkpoints/") and here:
            recorded[label.rsplit("/", 1)[-1]] = (int(match.group(1)), label)
    if not recorded:
        return []
    last = max(recorded.values())[1].rsplit("/", 1)[-1]
    present = {name.rsplit("/", 1)[-1] for name in tree.under(f"{run}/checkpoints")
               if CHECKPOINT.match(name.rsplit("/", 1)[-1])}
    present |= {name.rsplit("/", 1)[-1][:-len(".json")] + ".h5" for name in tree.under(f"{run}/lineage/checkpoints")
                if name.endswith(".json") and CHECKPOINT.match(name.rsplit("/", 1)[-1][:-len(".json")] + ".h5")}
    items = []
    for name in sorted(present - {last}):
        names = [n for n in (f"{run}/checkpoints/{name}", lineage.checkpoint_record(f"{run}/lineage", name))
                 if n in tree.files]
        why = "recorded by lineage/TrainNetwork.json, which is rewritten without it" if name in recorded else \
            "not recorded by lineage/TrainNetwork.json"
        items.append(Item(tree.where(names[0]), sum(tree.files[n].size for n in names), "checkpoint",
                          f"finished run, {last} stays (model.h5 has its weights and figures); {why}",
                          tuple(tree.where(n) for n in names), tree.location,
                          record=record_location if name in recorded else "",
                          label=recorded[name][1] if name in recorded else ""))
    return items


def _pipeline_directory(tree, directory):
    """Whether the pipeline writes files into this directory (a `/`-separated name, "" for the root)."""
    parts = directory.split("/") if directory else []
    if len(parts) >= 2 and parts[0] in ("raw", "processed") and DATASET.match(parts[1]):
        return True
    if len(parts) >= 2 and DATASET.match(parts[0]) and RUN_NAME.match(parts[1]):
        return True
    return len(parts) >= 3 and DATASET.match(parts[0]) and parts[1] == "sweeps" and bool(SWEEP_NAME.match(parts[2]))


def _temporaries(tree):
    """Items for the temporaries and staging directories in a tree."""
    items, staging = [], set()
    for name, stored in tree.files.items():
        parts = name.split("/")
        if len(parts) >= 3 and parts[0] == "raw" and STAGING.match(parts[1]):
            staging.add(parts[1])
            continue
        directory, base = name.rpartition("/")[0], parts[-1]
        match = TEMPORARY.match(base)
        if match and (_pipeline_directory(tree, directory) or (not directory and match["name"] in ROOT_FILES)):
            items.append(Item(tree.where(name), stored.size, "temporary", "orphaned temporary of a write that was "
                              "killed", (tree.where(name),), tree.location))
    # an empty staging directory holds no file (on a disk)
    staging |= {name for name in storage.subdirectories(tree.where("raw")) if STAGING.match(name)}
    items += [_dir_item(tree, f"raw/{name}", "staging", "orphaned download staging directory")
              for name in sorted(staging)]
    return items


def _uploads(tree, now, min_age):
    """Items for the multipart uploads under a bucket root never completed, started min_age ago."""
    items = []
    for name, upload_id, initiated in storage.unfinished_uploads(tree.location):
        started = initiated.timestamp() if hasattr(initiated, "timestamp") else None
        if started is None or now - started < min_age or not _pipeline_directory(tree, name.rpartition("/")[0]):
            continue
        items.append(Item(tree.where(name), 0, "upload", f"a multipart upload started {_utc(started)} and never "
                          f"completed (its parts)", (), tree.location, upload=(name, upload_id)))
    return items


def _cache_items(cache, now, cache_days, min_age):
    items = []
    objects = cache / "objects"
    for folder in sorted(p for p in objects.iterdir() if SHA256.match(p.name)) if objects.is_dir() else []:
        for path in sorted(folder.iterdir()):
            try:
                st = path.lstat()
            except OSError:
                continue
            if not path.is_file() or path.is_symlink():
                continue
            if TEMPORARY.match(path.name):
                if now - st.st_mtime >= min_age:
                    items.append(Item(str(path), st.st_size, "temporary", "orphaned temporary of a download",
                                      (str(path),), str(cache)))
            elif now - st.st_mtime >= cache_days * DAY:
                items.append(Item(str(path), st.st_size, "cached-object",
                                  f"a verified download not used since {_utc(st.st_mtime)}", (str(path),), str(cache)))
    for copy in sorted(p for p in cache.iterdir() if WORKING_COPY.match(p.name) and p.is_dir()) \
            if cache.is_dir() else []:
        newest = max([copy.lstat().st_mtime] + [os.lstat(os.path.join(d, n)).st_mtime
                                                for d, dirs, files in os.walk(copy) for n in files + dirs])
        if now - newest >= min_age:
            items.append(Item(str(copy), _disk_bytes(copy), "working-copy",
                              f"a worker's working copy, unchanged since {_utc(newest)}; remade when needed",
                              (), str(cache)))
    return items


# --- removing ---

def remove(items):
    """Remove the items of a plan; return the bytes freed. Checkpoints: lineage/TrainNetwork.json
    is rewritten without them first; runs: their rows of runs.csv are dropped before their files,
    and each directory loses its record first, so an interruption leaves nothing that claims a
    missing file (a run cut short is unfinished, and the next gc removes it)."""
    items = list(items)
    at_work = {item.root for item in items if item.kind in AT_WORK and _held_now(item.root)}
    items = [item for item in items if not (item.kind in AT_WORK and item.root in at_work)]
    freed = 0
    by_record = {}
    for item in items:
        if item.kind == "checkpoint" and item.record:
            by_record.setdefault(item.record, []).append(item.label)
    dropped = {record for record, labels in by_record.items() if _drop_outputs(record, labels)}
    by_root = {}
    for item in items:
        if item.kind in ("unfinished-run", "old-run"):
            by_root.setdefault(item.root, set()).add(item.run_id)
    for root, run_ids in by_root.items():
        if any(row["run_id"] in run_ids for row in runs.read_runs(root)):
            runs.drop_runs(root, run_ids)
    for item in items:
        if item.kind == "checkpoint" and item.record and item.record not in dropped:
            continue  # its record no longer vouches for its run: left as it is
        if _remove_item(item):
            freed += item.bytes
    return freed


def _held_now(root):
    """Whether a lock of root is held now (checked again just before removing)."""
    files = {f".locks/{name}": stored for name, stored in storage.listing(storage.join(root, ".locks")).items()}
    return any(lock.held for lock in _locks(root, files, time.time()))


def _remove_item(item):
    """Remove one item; False when it was gone already."""
    if item.kind == "upload":
        storage.abort_upload(item.root, *item.upload)
        return True
    if item.kind == "lock":
        return storage.remove_stale_lock(item.location)
    return storage.remove_tree(item.location, item.objects,
                               first=[location for location in item.objects if location.endswith(FIRST_RECORDS)])


def _drop_outputs(record_location, labels):
    """Rewrite a lineage record without the outputs of these labels, every other entry as it was;
    False (and nothing written) unless the record still vouches for all its outputs."""
    record = lineage.read_record(record_location)
    if record is None or lineage.problem(record_location, inputs=None, record=record) is not None:
        return False
    removed = sorted(set(labels) & set(record["outputs"]))
    if removed:
        record["outputs"] = {label: entry for label, entry in record["outputs"].items() if label not in removed}
        record.setdefault("removed_by_gc", []).append({
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "outputs": removed})
        storage.write_bytes(record_location, json.dumps(record, indent=2) + "\n")
    return True


# --- tables ---

def _table(columns, rows, right=()):
    widths = [max([len(str(c))] + [len(str(r[i])) for r in rows]) for i, c in enumerate(columns)]

    def line(values):
        return "  ".join(str(v).rjust(w) if i in right else str(v).ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()
    return "\n".join([line(columns)] + [line(r) for r in rows])


def format_usage(rows):
    """usage()'s rows as a printable table."""
    return _table(["kind", "dataset", "name", "state", "size"],
                  [[r.kind, r.dataset, r.name, r.state, human_size(r.bytes)] for r in rows], right=(4,))


def format_plan(items):
    """A plan as a printable table with its total and, for a Plan, its notes."""
    if items:
        text = _table(["kind", "size", "location", "reason"],
                      [[i.kind, human_size(i.bytes), i.location, i.reason] for i in items], right=(1,))
        text += f"\n{len(items)} item(s), {human_size(sum(i.bytes for i in items))} in all"
    else:
        text = "nothing to remove"
    for note in getattr(items, "notes", []):
        text += f"\nnote: {note}"
    return text
