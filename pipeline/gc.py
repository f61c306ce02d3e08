"""Disk usage of the data and the runs, and what may be removed without losing a result.

    items = plan("artifacts", "data", keep_runs=5, checkpoints=True)
    print(format_plan(items)); remove(items)

plan() proposes, and remove() removes:
- orphaned temporaries (`.<name>.<random>.tmp`, left by a killed atomic write) anywhere under
  both roots, and download staging directories (`data/raw/.<dataset>.<random>.partial`);
- unfinished or failed runs: run directories that lineage/EvaluateNetwork.json does not vouch
  for (a killed training's checkpoints are lost with them);
- with keep_runs=N, the finished runs beyond the N most recent by runs.csv's finished_at (over
  all datasets): their directory and their row of runs.csv, which is rewritten with index.html
  under runs.csv's lock; and a sweep once none of the runs it compares remains;
- with checkpoints=True, every checkpoint of a finished run but its last one. model.h5 holds
  the final weights and every epoch's figures, so the report needs none of them; the last is
  kept because `mnist-pipeline inspect <run>` lists a run by its checkpoints. Before the files
  go, lineage/TrainNetwork.json is rewritten without them (its other entries and digests
  unchanged, the removal noted under "removed_by_gc"), so TrainNetwork stays complete and
  nothing reruns.

Never proposed: raw or processed data, a finished run's model.h5, report or lineage, a sweep
any of whose runs remains, finished runs missing from runs.csv (they cannot be ranked).
A pipeline at work holds its task's lock: while any lock in artifacts/.locks is held, unfinished
runs and temporaries under artifacts/ are left alone (they may be the live task's), and so are
finished runs whose own task locks are held, and old runs while a Sweep runs; likewise
data/.locks for temporaries and staging directories under data/. The notes of the plan say
what was left and why. This is a check when planning, not a lock held until remove().
"""

import csv
import datetime
import fcntl
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline import checkpoint, lineage, pages, runs
from pipeline.atomic import exclusive_lock, write_atomically

TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
STAGING = re.compile(r"^\..+\.[A-Za-z0-9_]+\.partial$")
RUN_NAME = re.compile(r"^h\d+-b\d+-lr\S+-s\d+(-\d{4}-\d{2}-\d{2})?-[0-9a-f]{8}$")
RUN_TASKS = ("CheckGradient", "TrainNetwork", "EvaluateNetwork")


@dataclass(frozen=True)
class Item:
    """One thing plan() proposes to remove: a file or a directory, its size in bytes, its kind
    (temporary, staging, unfinished-run, old-run, sweep, checkpoint) and why it may go."""

    path: Path
    bytes: int
    kind: str
    reason: str


class Plan(list):
    """The Items of a plan, and `notes`: what was left alone and why."""

    def __init__(self, items=(), notes=()):
        super().__init__(items)
        self.notes = list(notes)


@dataclass(frozen=True)
class UsageRow:
    """Bytes under one path: kind is data, run, sweeps, other or total; state says more
    (finished, unfinished) where it applies."""

    kind: str
    dataset: str
    name: str
    path: Path
    bytes: int
    state: str = ""


# --- sizes ---

def size_of(path):
    """Bytes of a file, or of every file under a directory (symbolic links not followed); 0 when gone."""
    path = Path(path)
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def human_size(n):
    """`512 B`, `3.4 kB`, `1.2 MB`, `5.0 GB` (powers of 1000)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 999.95 or unit == "TB":
            return f"{n:.1f} {unit}"


# --- what is there ---

def _datasets(artifacts_dir):
    root = Path(artifacts_dir)
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def run_directories(artifacts_dir):
    """Every artifacts/<dataset>/<run_id>/ whose name is a run name, in name order."""
    return [run for dataset in _datasets(artifacts_dir) for run in sorted(dataset.iterdir())
            if run.is_dir() and RUN_NAME.match(run.name)]


def is_finished(run_dir):
    """True when lineage/EvaluateNetwork.json vouches for the run's report."""
    return lineage.problem(Path(run_dir) / "lineage" / "EvaluateNetwork.json", inputs=None) is None


def held_locks(locks_dir):
    """Names of the lock files in locks_dir that some process holds now."""
    held = set()
    locks_dir = Path(locks_dir)
    for path in sorted(locks_dir.glob("*.lock")) if locks_dir.is_dir() else []:
        try:
            with open(path) as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held.add(path.name)
                else:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        except OSError:
            held.add(path.name)  # cannot tell: count it as held
    return held


def usage(artifacts_dir, data_dir):
    """[UsageRow]: each dataset's data (raw and processed), each run directory, each dataset's
    sweeps, what else lies under the two roots, then totals for data, artifacts and both."""
    artifacts_dir, data_dir = Path(artifacts_dir), Path(data_dir)
    rows = []
    names = sorted({p.name for part in ("raw", "processed") if (data_dir / part).is_dir()
                    for p in (data_dir / part).iterdir() if p.is_dir() and not p.name.startswith(".")})
    counted = 0
    for name in names:
        size = size_of(data_dir / "raw" / name) + size_of(data_dir / "processed" / name)
        counted += size
        rows.append(UsageRow("data", name, "raw + processed", data_dir, size))
    data_total = size_of(data_dir)
    if data_total > counted:
        rows.append(UsageRow("other", "", "locks, staging, temporaries", data_dir, data_total - counted))
    counted = 0
    for run in run_directories(artifacts_dir):
        size = size_of(run)
        counted += size
        rows.append(UsageRow("run", run.parent.name, run.name, run, size,
                             "finished" if is_finished(run) else "unfinished"))
    for dataset in _datasets(artifacts_dir):
        if (dataset / "sweeps").is_dir():
            size = size_of(dataset / "sweeps")
            counted += size
            count = sum(1 for p in (dataset / "sweeps").iterdir() if p.is_dir())
            rows.append(UsageRow("sweeps", dataset.name, f"{count} sweeps", dataset / "sweeps", size))
    artifacts_total = size_of(artifacts_dir)
    if artifacts_total > counted:
        rows.append(UsageRow("other", "", "runs.csv, index.html, locks, ...", artifacts_dir,
                             artifacts_total - counted))
    rows += [UsageRow("total", "", "data", data_dir, data_total),
             UsageRow("total", "", "artifacts", artifacts_dir, artifacts_total),
             UsageRow("total", "", "all", Path(), data_total + artifacts_total)]
    return rows


# --- the plan ---

def plan(artifacts_dir, data_dir, keep_runs=None, checkpoints=False):
    """A Plan (a list of Item) of what may be removed; it only reads.
    keep_runs=N also proposes the finished runs beyond the N most recent; checkpoints=True the
    checkpoints of finished runs but the last. See the module's docstring for the rules."""
    if keep_runs is not None and (isinstance(keep_runs, bool) or not isinstance(keep_runs, int) or keep_runs < 0):
        raise ValueError(f"invalid keep_runs={keep_runs!r}: must be a whole number >= 0")
    artifacts_dir, data_dir = Path(artifacts_dir), Path(data_dir)
    items, notes = [], []
    held_artifacts = held_locks(artifacts_dir / ".locks")
    held_data = held_locks(data_dir / ".locks")
    if held_artifacts:
        notes.append(f"{len(held_artifacts)} lock(s) in {artifacts_dir / '.locks'} are held "
                     f"({', '.join(sorted(held_artifacts))}): a pipeline is at work, so unfinished runs and "
                     f"temporaries under {artifacts_dir} are kept")
    if held_data:
        notes.append(f"{len(held_data)} lock(s) in {data_dir / '.locks'} are held: temporaries and staging "
                     f"directories under {data_dir} are kept")

    all_runs = run_directories(artifacts_dir)
    finished = {run for run in all_runs if is_finished(run)}
    going = set()  # run directories proposed for removal
    for run in all_runs:
        if run in finished:
            continue
        if held_artifacts:
            continue
        record = lineage.problem(run / "lineage" / "EvaluateNetwork.json", inputs=None)
        lost = len(list((run / "checkpoints").glob("iter-*.h5")))
        failed = " (gradient check failed)" if (run / "gradient_check.failed.json").exists() else ""
        items.append(Item(run, size_of(run), "unfinished-run",
                          f"unfinished{failed}: no report to trust (EvaluateNetwork record {record})"
                          + (f"; {lost} checkpoint(s) of its training go with it" if lost else "")))
        going.add(run)

    busy = _busy_runs(finished, held_artifacts, notes)
    if keep_runs is not None:
        items += _old_runs(artifacts_dir, finished, keep_runs, busy, held_artifacts, notes, going)
    items += _orphaned_sweeps(artifacts_dir, going)
    if checkpoints:
        for run in sorted(finished - going - busy):
            items += _spare_checkpoints(run)

    removed_dirs = [item.path for item in items if item.path.is_dir()]
    for root, held, kind in ((data_dir, held_data, "data"), (artifacts_dir, held_artifacts, "artifacts")):
        if held:
            continue
        for path in _temporaries(root):
            if not any(parent in removed_dirs for parent in path.parents):
                what = "download staging directory" if path.is_dir() else "temporary of a write that was killed"
                items.append(Item(path, size_of(path), "staging" if path.is_dir() else "temporary",
                                  f"orphaned {what}"))
    return Plan(items, notes)


def _busy_runs(finished, held, notes):
    """Finished runs whose own task locks are held (a task of theirs runs again)."""
    if not held:
        return set()
    busy = set()
    for run in finished:
        try:
            names = {f"{task_id}.lock" for task_id in run_task_ids(run)}
        except Exception:  # noqa: BLE001 - cannot tell which locks are its own: leave it alone
            names = held
        if names & held:
            busy.add(run)
            notes.append(f"{run}: a task of this run holds its lock; kept as it is")
    return busy


def run_task_ids(run_dir):
    """Luigi task ids of the run's CheckGradient, TrainNetwork and EvaluateNetwork (which name
    their lock files), from the hyperparameters in its report."""
    from pipeline import tasks  # luigi only where it is needed

    params = json.loads((Path(run_dir) / "report" / "report.json").read_text())["hyperparameters"]
    return [getattr(tasks, name)(**params).task_id for name in RUN_TASKS]


def _old_runs(artifacts_dir, finished, keep_runs, busy, held, notes, going):
    rows = runs.read_runs(artifacts_dir / "runs.csv")
    by_path = {artifacts_dir / row.get("dataset", "") / row.get("run_id", ""): (row.get("finished_at", ""), i)
               for i, row in enumerate(rows)}
    ranked = sorted((run for run in finished if run in by_path), key=lambda run: by_path[run], reverse=True)
    unranked = sorted(run for run in finished if run not in by_path)
    for run in unranked:
        notes.append(f"{run}: finished but not in runs.csv, so it cannot be ranked; kept")
    sweeping = sorted(name for name in held if name.startswith("Sweep_"))
    if sweeping and ranked[keep_runs:]:
        notes.append(f"a Sweep is running ({', '.join(sweeping)}) and may read any report: no old run is removed")
        return []
    items = []
    for rank, run in enumerate(ranked[keep_runs:], keep_runs + 1):
        if run in busy:
            continue
        items.append(Item(run, size_of(run), "old-run",
                          f"finished {by_path[run][0]}, the {_ordinal(rank)} most recent of {len(ranked)} "
                          f"(keeping {keep_runs}); its row of runs.csv goes too"))
        going.add(run)
    return items


def _ordinal(n):
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _orphaned_sweeps(artifacts_dir, going):
    items = []
    for dataset in _datasets(artifacts_dir):
        sweeps = dataset / "sweeps"
        for sweep in sorted(p for p in sweeps.iterdir() if p.is_dir()) if sweeps.is_dir() else []:
            run_ids = sweep_run_ids(sweep)
            if not run_ids:
                continue  # cannot tell which runs it compares: keep it
            remaining = [r for r in run_ids if (dataset / r).exists() and dataset / r not in going]
            if not remaining and any(dataset / r in going for r in run_ids):
                items.append(Item(sweep, size_of(sweep), "sweep",
                                  f"compares {len(run_ids)} runs, none of which remains"))
    return items


def sweep_run_ids(sweep_dir):
    """The run ids a sweep compares: its lineage record's inputs, else summary.csv's run_id column."""
    record = lineage.read_record(Path(sweep_dir) / "lineage" / "Sweep.json")
    if record and record["inputs"]:
        return sorted(record["inputs"])
    try:
        with open(Path(sweep_dir) / "summary.csv", newline="") as f:
            return sorted(row["run_id"] for row in csv.DictReader(f) if row.get("run_id"))
    except (OSError, KeyError, csv.Error):
        return []


def _spare_checkpoints(run):
    """Items for the recorded checkpoints of a finished run but its last, when TrainNetwork's
    record still vouches for them (a stale record means TrainNetwork would rerun anyway)."""
    record = run / "lineage" / "TrainNetwork.json"
    if lineage.problem(record, inputs=None) is not None:
        return []
    outputs = {label: run / label for label in lineage.recorded_outputs(record)}  # labels are paths in the run
    numbered = sorted((checkpoint.iteration_of(label), label) for label in outputs
                      if label.startswith("checkpoints/") and checkpoint.iteration_of(label) is not None)
    if len(numbered) < 2:
        return []
    last = outputs[numbered[-1][1]].name
    return [Item(outputs[label], size_of(outputs[label]), "checkpoint",
                 f"finished run: model.h5 has its weights and figures; {last} stays, "
                 f"lineage/TrainNetwork.json is rewritten")
            for _, label in numbered[:-1]]


def _temporaries(root):
    """Temporary files anywhere under root, and staging directories under root/raw."""
    found = []
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        found += [here / name for name in files if TEMPORARY.match(name)]
        staging = [name for name in dirs if STAGING.match(name) and here.name == "raw"]
        found += [here / name for name in staging]
        dirs[:] = [name for name in dirs if name not in staging]
    return sorted(found)


# --- removing ---

def remove(items):
    """Remove the items of a plan; return the bytes freed (each item measured just before it
    goes; one already gone counts 0). For checkpoints, lineage/TrainNetwork.json is rewritten
    first; for runs, their rows of runs.csv are dropped (and index.html rewritten) before the
    directory goes, so an interruption leaves nothing that claims a missing file."""
    items = list(items)
    freed = 0
    by_record = {}
    for item in items:
        if item.kind == "checkpoint":
            by_record.setdefault(item.path.parent.parent / "lineage" / "TrainNetwork.json", []).append(item)
    for record, group in by_record.items():
        if _drop_outputs(record, [item.path for item in group]):
            for item in group:
                freed += _delete(item.path)
    runs_going = [item.path for item in items if item.kind in ("unfinished-run", "old-run")]
    by_root = {}
    for run in runs_going:
        by_root.setdefault(run.parent.parent, set()).add((run.parent.name, run.name))
    for root, gone in by_root.items():
        drop_runs(root / "runs.csv", gone)
    for item in items:
        if item.kind != "checkpoint":
            freed += _delete(item.path)
    return freed


def _delete(path):
    path = Path(path)
    size = size_of(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return 0
    return size


def _drop_outputs(record_path, paths):
    """Rewrite a lineage record without the outputs at these paths, every other entry as it was;
    False (and nothing written) unless the record still vouches for all its outputs."""
    record = lineage.read_record(record_path)
    if record is None or lineage.problem(record_path, inputs=None) is not None:
        return False
    gone = {os.path.normpath(os.path.abspath(p)) for p in paths}
    base = Path(record_path).parent
    kept = {label: entry for label, entry in record["outputs"].items()
            if os.path.normpath(os.path.abspath(base / entry["path"])) not in gone}
    removed = sorted(set(record["outputs"]) - set(kept))
    if not removed:
        return True
    record["outputs"] = kept
    record.setdefault("removed_by_gc", []).append({
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "outputs": removed})
    write_atomically(record_path, json.dumps(record, indent=2) + "\n")
    return True


def drop_runs(runs_csv, gone):
    """Remove the rows of runs.csv whose (dataset, run_id) is in `gone`, and rewrite index.html
    beside it, under runs.csv's lock as runs.add_run does; nothing when no row goes."""
    runs_csv = Path(runs_csv)
    with exclusive_lock(runs_csv.parent / ".locks" / (runs_csv.name + ".lock")):
        rows = runs.read_runs(runs_csv)
        kept = [row for row in rows if (row.get("dataset"), row.get("run_id")) not in gone]
        if len(kept) == len(rows):
            return
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=runs.RUN_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        write_atomically(runs_csv, out.getvalue())
        write_atomically(runs_csv.with_name("index.html"),
                         pages.index_page([runs.page_row(runs_csv.parent, row) for row in kept]))


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
    items = list(items) if not isinstance(items, Plan) else items
    if items:
        text = _table(["kind", "size", "path", "reason"],
                      [[i.kind, human_size(i.bytes), str(i.path), i.reason] for i in items], right=(1,))
        text += f"\n{len(items)} item(s), {human_size(sum(i.bytes for i in items))} in all"
    else:
        text = "nothing to remove"
    for note in getattr(items, "notes", []):
        text += f"\nnote: {note}"
    return text
