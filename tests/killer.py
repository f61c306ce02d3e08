"""Run luigi's command line, but SIGKILL this process at a chosen point: a real kill -9, at
a place chosen exactly rather than by a race.

    python tests/killer.py pipeline.report:write_atomically 3 after -- --module pipeline.tasks ...

The process kills itself with SIGKILL just before (`before`) or just after (`after`) the
Nth call of the named function; with `freeze` it stops itself (SIGSTOP) just after that call
instead, and goes on where it was once sent SIGCONT.
"""

import importlib
import os
import signal
import sys

import luigi.cmdline


def arm(target, count, when):
    module_name, attribute = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, attribute)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == count and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if len(calls) == count and when in ("after", "freeze"):
            os.kill(os.getpid(), signal.SIGSTOP if when == "freeze" else signal.SIGKILL)
        return result

    setattr(module, attribute, wrapper)


if __name__ == "__main__":
    target, count, when, separator, *luigi_args = sys.argv[1:]
    assert separator == "--" and when in ("before", "after", "freeze")
    import pipeline.tasks  # noqa: F401  (the module luigi will run, imported before arming)

    arm(target, int(count), when)
    luigi.cmdline.luigi_run(luigi_args)
