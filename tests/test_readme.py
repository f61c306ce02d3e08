"""The README tells the truth: every file it names is one a run writes (or one it names as the
user's own), and every command line it shows uses commands and flags that exist."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from runner import REPO, chain, run, workspace

README = (REPO / "README.md").read_text()
# names the README gives that are the user's or the tools', not a run's
NOT_OUTPUTS = {"README.md", "luigi.cfg", "pyproject.toml", "logging.cfg", "state.pickle", "history.db", "index.html",
               "mnist_pipeline.prom", "model.h5", "best.h5", "digit.png", "photo.jpg", "file.h5", "bench/README.md",
               "rules.yml", "mnist-pipeline.service", "mnist-pipeline.timer", "nightly.log"}
FILE_NAME = re.compile(r"[\w.+-]+\.(?:svg|png|jpg|csv|json|md|html|yaml|yml|h5|prom|log|cfg|toml|pickle|db)")


def _named_files():
    """Every file name the README writes in backticks or code, by its last path part."""
    found = set()
    for quoted in re.findall(r"`([^`\n]+)`", README) + re.findall(r"```[a-z]*\n(.*?)```", README, re.S):
        for name in FILE_NAME.findall(quoted):
            found.add(name.rsplit("/", 1)[-1])
    return found


@pytest.fixture(scope="module")
def written(tmp_path_factory, synthetic_source):
    """Every file name a sweep with a validation split writes, under data/ and artifacts/."""
    workdir = workspace(tmp_path_factory.mktemp("readme"))
    done = run(["sweep", *chain(synthetic_source)[4:], "--hidden-sizes", "[20,30]", "--validation-size", "100",
                "--patience", "2", "--iterations", "120"], workdir, tool="cli")
    assert done.returncode == 0, done.stderr[-3000:]
    return {path.name for path in workdir.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_every_file_the_readme_names_is_one_a_run_writes(written):
    named = _named_files()
    assert {"accuracy.svg", "report.json", "metrics.json", "accuracy.csv", "dvc.yaml", "summary.csv"} <= named
    missing = sorted(name for name in named if name not in written and name not in NOT_OUTPUTS
                     and not name.startswith("iter-"))
    assert missing == [], f"the README names files no run writes: {missing}"
    assert {"model.h5", "best.h5", "index.html"} <= written  # named above as not only a run's, but written too


def _command_lines():
    """(words) of every mnist-pipeline command the README shows, continuation lines joined."""
    lines = []
    for block in re.findall(r"```(?:sh|cron|ini)?\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            match = re.search(r"\.venv/bin/(mnist-pipeline(?:-luigi)?|luigi) (.*)", line)
            if match:
                lines.append((match.group(1), match.group(2)))
    return lines


def test_every_command_the_readme_shows_exists_with_its_flags():
    from pipeline import tasks

    commands = _command_lines()
    assert len(commands) >= 12
    helps = {}
    for tool, rest in commands:
        words = shlex.split(rest.replace("$(date +\\%F)", "2026-11-22").replace('"$(date +%%F)"', "2026-11-22")
                            .split(">>")[0], comments=False)
        flags = [w.split("=")[0] for w in words if w.startswith("--")]
        if tool == "mnist-pipeline":
            if words[0].startswith("-"):
                continue  # --version
            sub = words[0]
            if sub not in helps:
                done = subprocess.run([sys.executable, "-m", "pipeline", sub, "--help"], capture_output=True,
                                      text=True, cwd=REPO, timeout=60)
                assert done.returncode == 0, f"the README shows `mnist-pipeline {sub}`, which does not exist"
                helps[sub] = done.stdout
            unknown = [flag for flag in flags if flag not in helps[sub]]
            assert unknown == [], f"`mnist-pipeline {sub}` has no {unknown}"
        else:
            family = words[words.index("--module") + 2]
            known = {"--module", "--local-scheduler", "--scheduler-host", "--scheduler-port", "--workers", "--no-lock"}
            task = getattr(tasks, family, None) or getattr(__import__("luigi.tools.range").tools.range, family)
            known |= {"--" + name.replace("_", "-") for name, _ in task.get_params()}
            unknown = [flag for flag in flags if flag not in known]
            assert unknown == [], f"`{tool} --module pipeline.tasks {family}` has no {unknown}"


def test_the_readme_gives_the_test_command_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    command = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest"
    assert command in README and command in ci
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/mnist-pipeline run" in README
    assert Path(REPO / "bench" / "README.md").is_file()
