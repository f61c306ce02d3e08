"""Run history: luigid recording task history in SQLite (the README's recipe) after a small
sweep, its History page in a browser, and `mnist-pipeline history` from the database or from
the runs index; a wrong database is a one-line error."""

import sqlite3

import pytest

import servers
from browser import Browser
from pipeline.cli import main
from runner import chain, run, workspace


@pytest.fixture
def luigid_with_history(tmp_path):
    """luigid on 127.0.0.1 recording task history in tmp_path/luigid/history.db: (port, url, db path)."""
    db = tmp_path / "luigid" / "history.db"
    db.parent.mkdir()
    with servers.luigid(db.parent, f"record_task_history = true\n[task_history]\ndb_connection = sqlite:///{db}\n") \
            as (port, url):
        yield port, url, db


@pytest.mark.slow
def test_a_sweep_on_luigid_leaves_its_runs_in_the_history_database(tmp_path, luigid_with_history, synthetic_source):
    port, url, db = luigid_with_history
    workdir = workspace(tmp_path / "w")
    sweep = run(["sweep", *chain(synthetic_source)[4:], "--hidden-sizes", "[20,30]", "--scheduler-host", "127.0.0.1",
                 "--scheduler-port", str(port)], workdir, tool="cli")
    assert sweep.returncode == 0, sweep.stderr[-3000:]

    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT t.name, group_concat(e.event_name, ' ') FROM tasks t JOIN task_events e ON e.task_id = t.id "
            "GROUP BY t.id ORDER BY t.id").fetchall()
        hidden = connection.execute(
            "SELECT p.value FROM task_parameters p JOIN tasks t ON p.task_id = t.id "
            "WHERE t.name = 'EvaluateNetwork' AND p.name = 'hidden_size' ORDER BY p.value").fetchall()
    names = [name for name, _ in rows]
    assert names.count("EvaluateNetwork") == 2 and names.count("TrainNetwork") == 2 and names.count("Sweep") == 1
    assert all(events.split()[-1] == "DONE" and "RUNNING" in events for _, events in rows), rows
    assert hidden == [("20",), ("30",)]

    listed = run(["history", "--db", f"sqlite:///{db}"], workdir, tool="cli")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["started", "task", "run", "state", "seconds", "run_seconds", "host",
                                "train_accuracy", "test_accuracy"]
    runs_csv = (workdir / "artifacts" / "runs.csv").read_text()
    evaluations = [line.split() for line in lines[1:] if " EvaluateNetwork " in line]
    assert len(evaluations) == 2 and len([line for line in lines if " Sweep " in line]) == 1
    for fields in evaluations:
        run_id, state, seconds, run_seconds = fields[3], fields[4], float(fields[5]), float(fields[6])
        test_accuracy = float(fields[-1])
        assert state == "DONE" and 0 < seconds < run_seconds and run_id in runs_csv
        assert run_id.startswith(("h20-", "h30-")) and 0.5 < test_accuracy <= 1

    # every task with --all; the runs index alone without --db
    assert len(run(["history", "--db", f"sqlite:///{db}", "--all"], workdir, tool="cli").stdout.splitlines()) >= 10
    from_index = run(["history"], workdir, tool="cli")
    assert from_index.returncode == 0 and from_index.stdout.count(" DONE ") == 2, from_index.stdout

    if Browser.available():
        with Browser(height=2400) as browser:
            page = browser.open(url + "/history")
            text = page.evaluate("document.body.innerText")
            page.screenshot(tmp_path / "luigid-history.png")
        assert "EvaluateNetwork" in text and "Sweep" in text, text[:2000]


def test_history_of_an_empty_workspace_says_there_is_none(tmp_path, capsys):
    assert main(["history", "--artifacts-dir", str(tmp_path / "nothing")]) == 0
    assert capsys.readouterr().out.startswith("no runs recorded yet in")


@pytest.mark.parametrize("db, message", [
    ("nonsense://x", "is not a database URL SQLAlchemy can open"),
    ("sqlite:///{tmp}/not-history.db", "holds no luigid task history"),
])
def test_a_wrong_history_database_is_a_one_line_error(tmp_path, capsys, db, message):
    sqlite3.connect(tmp_path / "not-history.db").execute("CREATE TABLE other (x)").connection.close()
    assert main(["history", "--db", db.format(tmp=tmp_path)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_history_from_the_runs_index_adds_up_each_runs_stages(tmp_path, capsys):
    from pipeline import runs

    report = tmp_path / "mnist" / "h50-x" / "report"
    report.mkdir(parents=True)
    report.joinpath("report.json").write_text('{"stage_seconds": {"TrainNetwork": 2.5, "CheckGradient": 0.25}}')
    runs.add_run(tmp_path, {"run_id": "h50-x", "dataset": "mnist", "train_accuracy": 0.93,
                                         "test_accuracy": 0.9251})
    assert main(["history", "--artifacts-dir", str(tmp_path)]) == 0
    fields = capsys.readouterr().out.splitlines()[1].split()
    assert fields[1:5] == ["EvaluateNetwork", "h50-x", "DONE", "2.750"] and fields[-2:] == ["0.9300", "0.9251"]
