"""Servers the tests start on 127.0.0.1 and stop afterwards: a free port, a process that is
ready once a URL answers, and luigid with a config of the test's own."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(command, ready_url, what, **popen):
    """Start `command` and wait (30 s at most) until ready_url answers; yield the process, then
    stop it."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=1).read()
                break
            except OSError:
                assert server.poll() is None, f"{what} exited"
                assert time.monotonic() < deadline, f"{what} did not start"
                time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextlib.contextmanager
def luigid(directory, config=""):
    """luigid on a free port with its state in `directory` and `config` (luigi.cfg text) added to
    its own settings: yields (port, url)."""
    port = free_port()
    path = directory / "luigid.cfg"
    path.write_text(f"[core]\nautoload_range = false\n[scheduler]\nstate_path = {directory / 'luigid-state'}\n"
                    + config)
    url = f"http://127.0.0.1:{port}"
    with serving([sys.executable, "-c", "import luigi.cmdline; luigi.cmdline.luigid()", "--address", "127.0.0.1",
                  "--port", str(port)], url + "/api/task_list?data={}", "luigid",
                 env={**os.environ, "LUIGI_CONFIG_PATH": str(path)}, cwd=directory):
        yield port, url
