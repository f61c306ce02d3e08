"""Requests `mnist-pipeline status` makes on a complete 4-run sweep in an S3 bucket.

    .venv/bin/python bench/status_requests.py                   # this tree's pipeline
    /other/tree/.venv/bin/python bench/status_requests.py       # another tree's (its venv's pipeline)

moto's server on 127.0.0.1 holds the bucket (tests/s3server.py); a 4-run sweep on the
generated 600/200 dataset (tests/fakedata.py) is written into it with `python -m pipeline
sweep`, then `python -m pipeline status` runs once per run (status takes EvaluateNetwork's
flags, not a sweep's), its requests going through a proxy that counts them. LIST is a GET
with `list-type` in its query; other GETs with a query (tagging, ...) are counted apart.
Status runs twice: in the sweep's own workspace (its local cache warm, as right after the
sweep) and in a fresh workspace (nothing local, as on another machine). The pipeline is the
one the running interpreter imports, so each tree is measured with its own venv.
"""

import argparse
import collections
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # not the repo root: keep the venv's pipeline

import pipeline  # noqa: E402
from fakedata import make_idx_dataset  # noqa: E402
from s3server import FaultyProxy, S3Server  # noqa: E402

TREE = Path(pipeline.__file__).resolve().parent.parent
HIDDEN, RATES = [20, 30], [0.1, 0.5]
COMMON = ["--batch-size", "50", "--iterations", "60", "--sampling", "shuffle"]


class CountingProxy(FaultyProxy):
    """FaultyProxy without faults that also counts by kind: HEAD, GET, LIST, GET?query, PUT, ..."""

    def __init__(self, upstream):
        super().__init__(upstream)
        self.kinds = collections.Counter()
        self.log = []

    def _handle(self, handler):
        query = urlsplit(handler.path).query
        kind = handler.command
        if kind == "GET" and "list-type" in query:
            kind = "LIST"
        elif query:
            kind += "?" + query.split("=", 1)[0].split("&", 1)[0]
        with self.lock:
            self.kinds[kind] += 1
            self.log.append(f"{kind} {handler.path}")
        super()._handle(handler)


def run(command, cwd, env):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", *command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    return done, time.perf_counter() - start


def workspace(path):
    path.mkdir(parents=True)
    shutil.copy(TREE / "luigi.cfg", path / "luigi.cfg")
    return path


def measure():
    """One sweep, then status of its 4 runs from the sweep's workspace and from a fresh one."""
    root = Path(tempfile.mkdtemp(prefix="bench-status-"))
    try:
        source = root / "source"
        make_idx_dataset(source, 600, 200)
        with S3Server() as s3:
            flags = ["--dataset", "synthetic", "--source-dir", str(source), "--local-dirs", "[]", "--mirrors", "[]",
                     "--data-dir", s3.url("data"), "--artifacts-dir", s3.url("artifacts"), *COMMON]
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "PYTHONPATH"},
                   **s3.env}
            sweep_ws = workspace(root / "sweep")
            done, sweep_seconds = run(["sweep", *flags, "--hidden-sizes", json.dumps(HIDDEN),
                                       "--learning-rates", json.dumps(RATES)], sweep_ws, env)
            if done.returncode:
                sys.exit(f"sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
            results = {}
            for name, ws in (("sweep's workspace", sweep_ws), ("fresh workspace", workspace(root / "fresh"))):
                with CountingProxy(s3.endpoint) as proxy:
                    seconds = 0.0
                    for hidden in HIDDEN:
                        for rate in RATES:
                            done, took = run(["status", *flags, "--hidden-size", str(hidden),
                                              "--learning-rate", str(rate)], ws,
                                             {**env, "AWS_ENDPOINT_URL": proxy.endpoint})
                            seconds += took
                            if done.returncode:
                                sys.exit(f"status failed ({done.returncode}) for h{hidden} lr{rate}:\n"
                                         f"{done.stdout[-2000:]}{done.stderr[-3000:]}")
                    results[name] = (seconds, dict(proxy.counts), dict(proxy.kinds), list(proxy.log))
        return sweep_seconds, results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--verbose", action="store_true", help="list every request of the last repeat")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    print(f"pipeline from {TREE}")
    walls = collections.defaultdict(list)
    for repeat in range(args.repeats):
        sweep_seconds, results = measure()
        print(f"repeat {repeat + 1}: sweep {sweep_seconds:.1f} s")
        for name, (seconds, counts, kinds, log) in results.items():
            walls[name].append(seconds)
            total = sum(v for k, v in counts.items() if k not in ("faults",))
            print(f"  status x4, {name:18}: {seconds:5.2f} s, {total} requests; by method "
                  f"{json.dumps(dict(sorted(counts.items())))}; by kind {json.dumps(dict(sorted(kinds.items())))}")
            if args.verbose and repeat == args.repeats - 1:
                print("    " + "\n    ".join(log))
    for name, seconds in walls.items():
        print(f"median wall of 4 status calls, {name}: {statistics.median(seconds):.2f} s "
              f"(all: {', '.join(f'{s:.2f}' for s in seconds)})")


if __name__ == "__main__":
    main()
