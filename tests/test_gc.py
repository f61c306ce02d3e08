"""pipeline.gc on real runs: six finished runs (seeds 0-5), one killed in training (seed 9),
a stray temporary and a download staging directory. The dry run changes nothing; removing
frees what it listed and leaves every kept run complete, so nothing would rerun."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline import cli, gc, lineage, report, runs
from pipeline.atomic import exclusive_lock
from runner import RUN, chain, run, workspace

pytestmark = pytest.mark.slow
SEEDS = range(6)
KILLED_SEED = 9


@pytest.fixture(scope="module")
def template(tmp_path_factory, synthetic_source):
    """A workspace with the runs; each test works on a copy."""
    workdir = workspace(tmp_path_factory.mktemp("gc") / "ws")
    first = run(chain(synthetic_source, "--seed", "0"), workdir)
    assert first.returncode == 0, first.stderr
    with ThreadPoolExecutor(5) as pool:
        done = list(pool.map(lambda k: run(chain(synthetic_source, "--seed", str(k)), workdir), SEEDS[1:]))
    assert all(r.returncode == 0 for r in done), [r.stderr for r in done if r.returncode]
    killed = run(["pipeline.checkpoint:save_checkpoint", "3", "before", "--",
                  *chain(synthetic_source, "--seed", str(KILLED_SEED))], workdir, tool="killer")
    assert killed.returncode != 0
    (workdir / "artifacts" / "synthetic" / ".x.abc.tmp").write_bytes(b"half a file")
    staging = workdir / "data" / "raw" / ".synthetic.k3j4h5.partial"
    staging.mkdir()
    (staging / "train-images-idx3-ubyte.gz").write_bytes(b"\0" * 1000)
    return workdir


@pytest.fixture
def ws(template, tmp_path):
    return Path(shutil.copytree(template, tmp_path / "ws", symlinks=True))


def run_dirs(ws):
    return {p.name: p for p in (ws / "artifacts" / "synthetic").iterdir() if p.name.startswith("h30-")}


def seed_of(run_dir):
    return int(run_dir.name.split("-s")[1].split("-")[0])


def finish_order(ws):
    """Run ids in the order they finished: runs.add_run appends each run's row once."""
    return [row["run_id"] for row in runs.read_runs(ws / "artifacts" / "runs.csv")]


def snapshot(root):
    return {str(p.relative_to(root)): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def status_args(ws, source, seed):
    return ["status", "--dataset", "synthetic", "--source-dir", str(source), "--local-dirs", "[]", "--mirrors", "[]",
            "--data-dir", str(ws / "data"), "--artifacts-dir", str(ws / "artifacts"), *RUN, "--seed", str(seed)]


def expected_items(ws, keep):
    """{path: kind} a plan(keep_runs=keep, checkpoints=True) must list, worked out from the layout."""
    dirs = run_dirs(ws)
    order = finish_order(ws)
    kept, old = order[len(order) - keep:], order[:len(order) - keep]
    killed = next(d for d in dirs.values() if seed_of(d) == KILLED_SEED)
    expected = {killed: "unfinished-run", ws / "artifacts" / "synthetic" / ".x.abc.tmp": "temporary",
                ws / "data" / "raw" / ".synthetic.k3j4h5.partial": "staging"}
    expected.update({dirs[name]: "old-run" for name in old})
    for name in kept:
        *spare, last = sorted((dirs[name] / "checkpoints").glob("iter-*.h5"))
        assert last.name == "iter-00000060.h5"
        expected.update({path: "checkpoint" for path in spare})
    return expected, kept


def test_the_dry_run_lists_exactly_the_expected_items_and_changes_nothing(ws):
    before = snapshot(ws)
    expected, _ = expected_items(ws, keep=3)
    items = gc.plan(ws / "artifacts", ws / "data", keep_runs=3, checkpoints=True)
    assert {item.path: item.kind for item in items} == expected
    assert len(items) == len(expected) == 1 + 1 + 1 + 3 + 3 * 5
    assert all(item.bytes == gc.size_of(item.path) > 0 for item in items)
    assert items.notes == []
    assert "item(s)" in gc.format_plan(items) and "old-run" in gc.format_plan(items)
    assert snapshot(ws) == before


def test_without_options_only_temporaries_staging_and_the_killed_run_are_proposed(ws):
    expected, _ = expected_items(ws, keep=len(SEEDS))
    items = gc.plan(ws / "artifacts", ws / "data")
    assert {item.path: item.kind for item in items} == {
        path: kind for path, kind in expected.items() if kind != "checkpoint"}
    (killed,) = [item for item in items if item.kind == "unfinished-run"]
    assert "2 checkpoint(s)" in killed.reason


def test_remove_frees_the_planned_bytes_and_every_kept_run_stays_complete(ws, synthetic_source, capsys):
    items = gc.plan(ws / "artifacts", ws / "data", keep_runs=3, checkpoints=True)
    _, kept = expected_items(ws, keep=3)
    removed = [run_id for run_id in finish_order(ws) if run_id not in kept]
    assert len(removed) == 3
    assert gc.remove(items) == sum(item.bytes for item in items)
    assert not any(item.path.exists() for item in items)
    assert set(run_dirs(ws)) == set(kept)
    assert (ws / "data" / "processed" / "synthetic" / "images.h5").exists()

    assert [row["run_id"] for row in runs.read_runs(ws / "artifacts" / "runs.csv")] == kept
    page = (ws / "artifacts" / "index.html").read_text()
    assert all(run_id in page for run_id in kept)
    assert not any(run_id in page for run_id in removed)
    for run_id in kept:
        run_dir = ws / "artifacts" / "synthetic" / run_id
        assert report.read_report(run_dir / "report")["run_id"] == run_id
        assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["iter-00000060.h5"]
        record = run_dir / "lineage" / "TrainNetwork.json"
        assert set(lineage.recorded_outputs(record)) == {"model.h5", "checkpoints/iter-00000060.h5"}
        assert lineage.problem(record, inputs=None) is None
        assert cli.main(["inspect", str(run_dir)]) == 0
        assert cli.main(status_args(ws, synthetic_source, seed_of(run_dir))) == 0, capsys.readouterr().out
    capsys.readouterr()
    assert cli.main(["inspect", "--artifacts-dir", str(ws / "artifacts")]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == kept
    assert gc.plan(ws / "artifacts", ws / "data", keep_runs=3, checkpoints=True) == []


def test_a_held_lock_keeps_unfinished_runs_temporaries_and_that_runs_files(ws):
    dirs = run_dirs(ws)
    busy = next(d for d in dirs.values() if seed_of(d) == 1)
    lock = ws / "artifacts" / ".locks" / (gc.run_task_ids(busy)[1] + ".lock")
    assert lock.exists()
    with exclusive_lock(lock):
        items = gc.plan(ws / "artifacts", ws / "data", checkpoints=True)
    kinds = {item.kind for item in items}
    assert "unfinished-run" not in kinds and "temporary" not in kinds
    assert "staging" in kinds  # data/.locks are free
    assert not any(busy in item.path.parents for item in items)
    assert {item.path.parent.parent for item in items if item.kind == "checkpoint"} == {
        d for d in dirs.values() if seed_of(d) not in (1, KILLED_SEED)}
    assert any("held" in note for note in items.notes) and any(str(busy) in note for note in items.notes)
    assert "note:" in gc.format_plan(items)


def test_a_sweep_goes_only_with_all_its_runs(ws):
    order = finish_order(ws)
    sweeps = ws / "artifacts" / "synthetic" / "sweeps"
    for name, run_ids in (("sweep-old", order[:2]), ("sweep-mixed", [order[0], order[-1]])):
        (sweeps / name).mkdir(parents=True)
        (sweeps / name / "summary.csv").write_text("run_id,hidden_size\n" + "".join(f"{r},30\n" for r in run_ids))
    items = gc.plan(ws / "artifacts", ws / "data", keep_runs=3)
    assert [item.path.name for item in items if item.kind == "sweep"] == ["sweep-old"]
    assert "sweeps" not in {item.path.name for item in gc.plan(ws / "artifacts", ws / "data")}


def test_usage_counts_every_byte_and_the_tables_read_well(ws):
    rows = gc.usage(ws / "artifacts", ws / "data")
    totals = {row.name: row.bytes for row in rows if row.kind == "total"}
    assert totals["data"] == sum(row.bytes for row in rows if row.kind in ("data", "other") and
                                 row.path == ws / "data")
    assert totals["artifacts"] == sum(row.bytes for row in rows if row.kind in ("run", "sweeps", "other") and
                                      row.path != ws / "data")
    assert totals["all"] == totals["data"] + totals["artifacts"]
    states = {row.name: row.state for row in rows if row.kind == "run"}
    assert sorted(states.values()) == ["finished"] * len(SEEDS) + ["unfinished"]
    text = gc.format_usage(rows)
    assert "kB" in text and "MB" in text and len(text.splitlines()) == len(rows) + 1
    assert json.dumps([gc.human_size(n) for n in (0, 999, 1000, 1234567, 5 * 10**9)]) == \
        '["0 B", "999 B", "1.0 kB", "1.2 MB", "5.0 GB"]'
    assert gc.format_plan([]) == "nothing to remove"
