"""The identity of a training run: a readable slug plus a hash of every result-changing parameter."""

import hashlib
import json


def run_name(params):
    """`h50-b100-lr0.1-s0-3fa9c2d1` for params holding hidden_size, batch_size,
    learning_rate and seed, plus anything else that changes the result (dataset,
    iterations, dtype, ...). Every key of params goes into the hash, so any changed
    value gives a new name; equal values always give the same one.
    """
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]
    slug = "h{hidden_size}-b{batch_size}-lr{learning_rate:g}-s{seed}".format(**params)
    return f"{slug}-{digest}"
