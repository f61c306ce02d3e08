"""The reproducibility canary: a dated run against the newest earlier date's run of the same
parameters. Same data and parameters must give the same weights, bit for bit; when they do
not, say what changed in the environment between the two.

A run's record (a dict): {"weights_sha256": str, "data_sha256": {file name: sha256},
"environment": environment(), "date": "YYYY-MM-DD", "run_id": str}.

    compare(current, previous) -> (status, message), status one of STATUSES

Pure but for environment() (reads /proc/cpuinfo) and check(), which finds the previous date's
run through the runs index and reads its report.
"""

import hashlib
import json
import platform

STATUSES = ("reproducible", "different-bits", "different-data", "no-previous")
PARAM_ORDER = ("W1", "b1", "W2", "b2")


def weights_sha256(params):
    """sha256 (hex) of the weights: each of W1, b1, W2, b2 in turn as name, dtype, shape and its
    C-order bytes. params: {name: numpy array}; equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name in PARAM_ORDER:
        array = params[name]
        digest.update(f"{name}:{array.dtype.str}:{list(array.shape)}\n".encode())
        digest.update(array.tobytes(order="C"))
    return digest.hexdigest()


def environment():
    """What the last bits of a training depend on, as plain JSON values: the versions a report
    records (pipeline.report.environment: Python, numpy, h5py, luigi, the BLAS loaded and its
    thread count in force now), the machine, and the CPU's flags."""
    from pipeline.report import environment as versions

    found = versions()
    blas = found["blas"]
    return {"python": found["python"], "numpy": found["numpy"], "h5py": found["h5py"], "luigi": found["luigi"],
            "machine": platform.machine(), "blas": blas.get("loaded", ""), "blas_version": blas.get("loaded_version", ""),
            "blas_architecture": blas.get("architecture", ""), "blas_threads": blas.get("threads"),
            "cpu_flags": _cpu_flags()}


def _cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags, sorted ([] where /proc/cpuinfo has none, e.g. not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return sorted(set(value.split()))
    except OSError:
        pass
    return []


def newest_earlier(records, date):
    """The record with the latest "date" before `date` (ISO strings compare as dates), or None."""
    earlier = [r for r in records if r.get("date") and r["date"] < date]
    return max(earlier, key=lambda r: r["date"]) if earlier else None


def environment_changes(before, after):
    """["numpy 2.4.6 -> 2.5.0", "cpu_flags +avx512f -sse4a", ...] for every fact that differs."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, list) or isinstance(new, list):
            added = sorted(set(new or []) - set(old or []))
            removed = sorted(set(old or []) - set(new or []))
            changes.append(f"{key} " + " ".join([f"+{f}" for f in added] + [f"-{f}" for f in removed]))
        else:
            changes.append(f"{key} {old} -> {new}")
    return changes


def compare(current, previous):
    """(status, one-line message) for a run's record against the previous date's (or None)."""
    if previous is None:
        return "no-previous", f"{current['run_id']}: no earlier dated run of the same parameters to compare with"
    against = f"{previous['run_id']} of {previous.get('date')}"
    data_now, data_then = current.get("data_sha256") or {}, previous.get("data_sha256") or {}
    if data_now != data_then:
        changed = sorted(name for name in set(data_now) | set(data_then) if data_now.get(name) != data_then.get(name))
        return "different-data", (f"{current['run_id']}: trained on other data than {against} (changed: "
                                  f"{', '.join(changed)}); its weights are not expected to match")
    changes = environment_changes(previous.get("environment") or {}, current.get("environment") or {})
    if current["weights_sha256"] == previous["weights_sha256"]:
        despite = f" (changed since, without effect: {'; '.join(changes)})" if changes else ""
        return "reproducible", f"{current['run_id']}: weights bit-identical to {against}{despite}"
    what = "; ".join(changes) if changes else "nothing recorded changed (a non-deterministic computation?)"
    return "different-bits", (f"{current['run_id']}: weights differ from {against} with the same data and "
                              f"parameters; changed since: {what}")


def previous(artifacts_dir, dataset, hyperparameters, date):
    """The canary record of the newest run before `date` of the same dataset and the same other
    hyperparameters, from the runs index and that run's report (read from the bytes its record
    vouches for, on a disk or in a bucket); None when there is none."""
    from pipeline import lineage, runs, storage

    same = {key: value for key, value in hyperparameters.items() if key != "date"}
    rows = [row for row in runs.read_runs(artifacts_dir)
            if row["dataset"] == dataset and row.get("date") and row["date"] < str(date)]
    for row in sorted(rows, key=lambda row: row["date"], reverse=True):
        record_location = storage.join(artifacts_dir, row["dataset"], row["run_id"], "lineage", "EvaluateNetwork.json")
        record = lineage.read_record(record_location)
        if record is None or lineage.problem(record_location, record=record) is not None:
            continue
        location, entry = lineage.files(record_location, record)["report.json"]
        try:
            earlier = json.loads(lineage.read_verified(location, entry))
        except (OSError, ValueError):
            continue
        hyper = {key: value for key, value in earlier.get("hyperparameters", {}).items() if key != "date"}
        if hyper == same and isinstance(earlier.get("canary"), dict):
            return earlier["canary"]
    return None


def check(artifacts_dir, run_id, hyperparameters, params, data_sha256, log=None):
    """The canary of a dated run (hyperparameters["date"]): its weights, data and environment
    compared with the newest earlier date's run of the same other hyperparameters; a dict
    {weights_sha256, data_sha256, environment, date, run_id, status, message} for its report,
    logged (a warning for different bits). None for an undated run."""
    date = hyperparameters.get("date")
    if not date:
        return None
    current = {"weights_sha256": weights_sha256(params), "data_sha256": dict(data_sha256),
               "environment": environment(), "date": str(date), "run_id": run_id}
    status, message = compare(current, previous(artifacts_dir, hyperparameters["dataset"], hyperparameters, date))
    if log is not None:
        (log.warning if status == "different-bits" else log.info)("canary: %s", message)
    return {**current, "status": status, "message": message}
