"""The identity of a training run: a readable slug plus a hash of every result-changing parameter."""

import datetime
import hashlib
import json

from pipeline.errors import ParameterError


def run_name(params):
    """`h50-b100-lr0.1-s0-3fa9c2d1` for params holding hidden_size, batch_size,
    learning_rate and seed, plus anything else that changes the result (dataset,
    iterations, dtype, ...). Every key of params goes into the hash, so any changed
    value gives a new name; equal values always give the same one.
    """
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]
    slug = "h{hidden_size}-b{batch_size}-lr{learning_rate:g}-s{seed}".format(**params)
    if params.get("date"):
        slug += "-" + params["date"]
    return f"{slug}-{digest}"


def sweep_name(run_ids):
    """`sweep-1a2b3c4d`: a hash of the set of runs a sweep compares, so the same grid
    always writes to the same directory and a changed grid to a new one."""
    canonical = json.dumps(sorted(set(run_ids)), separators=(",", ":"))
    return "sweep-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]


def validate_run_date(date):
    """None, or an ISO date YYYY-MM-DD; anything else is a ParameterError."""
    if date is None:
        return
    try:
        parsed = datetime.date.fromisoformat(date)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.isoformat() != date:
        raise ParameterError(f"invalid date={date!r}: must be a date like 2026-11-22 (YYYY-MM-DD)")
