"""A toy DAG of six tasks for the central-scheduler worker tests (tests/test_workers.py).

    Leaf(a)  Leaf(b)  Leaf(c)
        \\    /    \\    /
        Join(d)    Join(e)
              \\    /
              Root(f)

Each task sleeps a little, appends "<task> <pid>" to <out_dir>/ran.log (one O_APPEND write,
so concurrent workers never interleave a line) and writes its output file atomically.
`fail` names one task that raises instead."""

import os
import time
from pathlib import Path

import luigi

GRAPH = {"a": [], "b": [], "c": [], "d": ["a", "b"], "e": ["b", "c"], "f": ["d", "e"]}


class ToyTask(luigi.Task):
    name = luigi.Parameter(default="f")
    out_dir = luigi.Parameter()
    sleep = luigi.FloatParameter(default=0.5)
    fail = luigi.Parameter(default="")

    def requires(self):
        return [self.clone(name=dep) for dep in GRAPH[self.name]]

    def output(self):
        return luigi.LocalTarget(str(Path(self.out_dir) / f"{self.name}.done"))

    def run(self):
        time.sleep(self.sleep)
        log = os.open(Path(self.out_dir) / "ran.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(log, f"{self.name} {os.getpid()}\n".encode())
        finally:
            os.close(log)
        if self.name == self.fail:
            raise RuntimeError(f"toy task {self.name} fails on purpose")
        with self.output().temporary_path() as path:
            Path(path).write_text(self.name + "\n")
