"""pipeline.pages: the run, index and sweep pages, as strings and as a real browser shows them.

The browser tests run Debian's headless chromium (tests/browser.py) and are skipped only
where it is not installed. Screenshots of a run page and of an index go to
$PAGES_SHOTS_DIR (default /tmp/pages-shots) for a person to look at."""

import datetime
import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from browser import Browser
from pipeline.pages import BEST_COLUMN, index_page, line_plot, run_page, sweep_page

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
STAGES = {"DownloadDataset": 0.4, "NormalizeImages": 1.9, "EncodeLabels": 0.3, "CheckGradient": 0.1,
          "TrainNetwork": 3.4, "EvaluateNetwork": 0.2}


def make_report(iterations=10000, batch_size=100, seed=0, stage_seconds=None, run_id=None, class_names=FASHION):
    """A report dict as the pipeline writes it: a 50-unit net on Fashion-MNIST, evaluated each epoch."""
    rng = np.random.default_rng(seed)
    per_epoch = 60000 // batch_size
    evaluated = list(range(0, iterations, per_epoch)) + [iterations]
    epochs = []
    for iteration in evaluated:
        progress = 1 - np.exp(-iteration / 2500)
        train_accuracy = round(0.10 + 0.76 * progress + rng.normal(0, 0.004) * (iteration > 0), 4)
        test_accuracy = round(train_accuracy - 0.012 * progress, 4)
        train_loss = float(2.302 - 1.89 * progress + rng.normal(0, 0.01) * (iteration > 0))
        epochs.append({"epoch": iteration / per_epoch, "iteration": iteration, "train_accuracy": float(train_accuracy),
                       "test_accuracy": float(test_accuracy), "train_loss": train_loss,
                       "test_loss": train_loss + 0.03 * progress})
    confusion = np.zeros((10, 10), dtype=int)
    recalls = [0.80, 0.95, 0.74, 0.85, 0.76, 0.93, 0.55, 0.92, 0.95, 0.94]
    confusers = {0: 6, 1: 3, 2: 4, 3: 1, 4: 2, 5: 7, 6: 0, 7: 9, 8: 6, 9: 7}
    for k, recall in enumerate(recalls):
        right = int(1000 * recall)
        confusion[k, k] = right
        confusion[k, confusers[k]] += (1000 - right) * 2 // 3
        rest = 1000 - confusion[k].sum()
        for j in rng.choice([j for j in range(10) if j != k], size=rest):
            confusion[k, j] += 1
    epochs[-1]["test_accuracy"] = float(np.trace(confusion) / confusion.sum())
    losses = 2.302 * np.exp(-np.arange(1, iterations + 1) / 1800) + 0.4 + rng.normal(0, 0.08, iterations)
    params = {"dataset": "fashion-mnist", "hidden_size": 50, "batch_size": batch_size, "learning_rate": 0.1,
              "iterations": iterations, "weight_init_std": 0.01, "seed": seed, "dtype": "float32",
              "sampling": "with-replacement"}
    return {
        "run_id": run_id or f"h50-b{batch_size}-lr0.1-s{seed}-1a2b3c4d",
        "dataset": "fashion-mnist",
        "class_names": class_names,
        "hyperparameters": params,
        "epochs": epochs,
        "final": dict(epochs[-1]),
        "minibatch_loss": [float(v) for v in np.abs(losses)],
        "confusion_matrix": confusion.tolist(),
        "per_class_accuracy": [float(confusion[k, k] / confusion[k].sum()) for k in range(10)],
        "gradient_check": {"passed": True, "worst_relative_error": 2.4e-9, "tolerance": 1e-6, "parameters": {
            "W1": {"relative_error": 2.4e-9, "entries_checked": 100, "entries_total": 39200},
            "b1": {"relative_error": 8.1e-11, "entries_checked": 50, "entries_total": 50},
            "W2": {"relative_error": 1.3e-10, "entries_checked": 100, "entries_total": 500},
            "b2": {"relative_error": 4.4e-11, "entries_checked": 10, "entries_total": 10}}},
        "digests": {"data": {"images.h5": "3f" * 32, "labels.h5": "a9" * 32}, "model": "5c0ffee" + "0" * 57},
        "checkpoints": [{"file": f"iter-{i:08d}.h5", "iteration": i, "epoch": i / per_epoch, "sha256": f"{i:064x}"}
                        for i in evaluated[1:]],
        "stage_seconds": dict(STAGES if stage_seconds is None else stage_seconds),
        "created_at": "2026-12-01T21:00:00+00:00",
        "package_version": "0.2.0",
    }


def make_rows(count, points=20, seed=0):
    """`count` index rows of a grid of runs, each with a `points`-point test-accuracy curve."""
    rng = np.random.default_rng(seed)
    start = datetime.datetime(2026, 11, 20, 8, 0, tzinfo=datetime.timezone.utc)
    rows = []
    for n in range(count):
        hidden, lr, batch = (50, 100, 200)[n % 3], (0.01, 0.1, 0.5)[(n // 3) % 3], (100, 200)[(n // 9) % 2]
        ceiling, pace = 0.70 + 0.17 * rng.random(), 1 + 3 * rng.random()
        epochs = np.linspace(0, 16.67, points)
        accuracy = 0.1 + (ceiling - 0.1) * (1 - np.exp(-epochs / pace)) + rng.normal(0, 0.004, points) * (epochs > 0)
        curve = [[float(e), float(round(a, 4))] for e, a in zip(epochs, accuracy)]
        run_id = f"h{hidden}-b{batch}-lr{lr:g}-s{n}-{n * 2654435761 % 2**32:08x}"
        rows.append({"run_id": run_id, "dataset": ("mnist", "fashion-mnist")[n % 2], "hidden_size": hidden,
                     "batch_size": batch, "learning_rate": lr, "iterations": 10000, "seed": n, "dtype": "float32",
                     "sampling": "with-replacement", "final_train_accuracy": curve[-1][1] + 0.01,
                     "final_test_accuracy": curve[-1][1],
                     "finished_at": (start + datetime.timedelta(hours=7 * n, minutes=n)).isoformat(),
                     "href": f"runs/{run_id}/report/index.html", "curve": curve})
    return rows


def _external_references(page):
    """Anything in a page that could make the browser fetch: src=, href= to a URL, url() but #ids, @import."""
    found = re.findall(r'\bsrc\s*=|@import|url\((?!#)', page)
    found += [h for h in re.findall(r'href="([^"]*)"', page) if re.match(r"[a-z]+:", h)]
    return found


# --- pages as strings -------------------------------------------------------------------------

def test_run_page_is_self_contained_and_small_with_100000_losses():
    page = run_page(make_report(iterations=100000))
    assert len(page.encode("utf-8")) < 1_000_000
    assert _external_references(page) == []
    assert page.count("<svg") == 3
    assert 'id="minibatch-count" data-value="100000"' in page


def test_index_of_100_runs_with_20_point_curves_stays_under_2_mb():
    page = index_page(make_rows(100, points=20))
    assert len(page.encode("utf-8")) < 2_000_000
    assert _external_references(page) == []
    assert page.count("<tr data-run=") == 100


def test_text_is_escaped_everywhere():
    evil = '<script>alert("x")</script>&'
    report = make_report(run_id=evil, class_names=[evil] + FASHION[1:])
    report["hyperparameters"]["note"] = evil
    report["digests"]["data"] = {evil: "00"}
    rows = make_rows(2)
    rows[0]["run_id"] = "</script><script>alert(1)</script>"
    rows[1]["href"] = "javascript:alert(1)"
    for page in (run_page(report), index_page(rows), sweep_page(evil, rows)):
        assert "<script>alert" not in page
        assert "javascript:" not in page
    assert html.escape(evil) in run_page(report)


def test_run_page_numbers_are_the_reports():
    report = make_report()
    page = run_page(report)
    final = report["final"]["test_accuracy"]
    assert f'id="final-test_accuracy" data-value="{final!r}"' in page
    for row in report["epochs"]:
        assert f'data-key="train_loss" data-value="{row["train_loss"]!r}"' in page
    for name, seconds in STAGES.items():
        assert f'data-key="{name}" data-value="{seconds!r}"' in page


def test_run_page_without_optional_parts():
    report = make_report(stage_seconds={"TrainNetwork": 2.5})
    for key in ("gradient_check", "digests", "checkpoints", "minibatch_loss", "class_names"):
        del report[key]
    report["per_class_accuracy"][3] = None
    page = run_page(report)
    assert "not recorded" in page and "no samples" in page
    assert page.count(">cached<") == 5
    assert ">3<" in page  # class 3 named by its number
    assert run_page({"run_id": "empty"}).count("no data") == 3


def test_sweep_page_orders_by_final_test_accuracy_and_labels_the_best_epoch():
    rows = make_rows(6)
    rows[2]["final_test_accuracy"] = None
    page = sweep_page("sweep-1a2b3c4d", rows)
    shown = [float(v) for v in re.findall(r'data-key="final_test_accuracy" data-value="([^"]+)"', page)]
    assert shown == sorted(shown, reverse=True) and len(shown) == 5
    assert page.index(rows[2]["run_id"] + "</a>") > page.index(rows[0]["run_id"] + "</a>")
    assert html.escape(BEST_COLUMN) in page and "chosen on the test set" in page
    best = max(a for _, a in rows[0]["curve"])
    assert f'data-key="best_test_accuracy" data-value="{best!r}"' in page
    for row in rows:  # curves from 0.6 up: the y axis fits them, not 0-1
        row["curve"] = [[e, 0.6 + a / 4] for e, a in row["curve"]]
    page = sweep_page("sweep-1a2b3c4d", rows)
    low, high = (float(v) for v in re.search(r'id="sweep-plot"[^>]*data-y-min="([^"]+)" data-y-max="([^"]+)"',
                                             page).groups())
    values = [a for row in rows for _, a in row["curve"]]
    assert low <= min(values) and high >= max(values)
    assert (high - low) < 1.5 * (max(values) - min(values))


def test_line_plot_draws_axes_ticks_legend_and_lines():
    svg = line_plot([{"label": "train", "points": [(0, 0.1), (1, 0.5), (2, 0.8)]},
                     {"label": "test & more", "points": [(0, 0.1), (1, 0.45), (2, 0.7)]}],
                    title="Accuracy", x_label="epoch", y_label="accuracy", plot_id="p")
    assert svg.count('<polyline class="line"') == 2
    assert "test &amp; more" in svg and ">Accuracy</text>" in svg and ">epoch</text>" in svg
    y_ticks = re.findall(r'text-anchor="end" font-size="11">([^<]+)<', svg)
    assert y_ticks == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    single = line_plot([{"label": "one", "points": [(3, 0.5)]}], title="t", x_label="x", y_label="y", plot_id="q")
    assert single.count("<polyline") == 1 and "nan" not in single
    large = line_plot([{"label": "l", "points": [(1, 2.0), (100000, 0.3)]}], title="t", x_label="iteration",
                      y_label="loss", plot_id="r")
    assert ">100k<" in large


# --- pages in a browser -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not Browser.available():
        pytest.skip("chromium is not installed (apt-get install chromium): no browser tests")
    with Browser() as running:
        yield running


def _open(browser, tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    page = browser.open(path)
    return page


def _assert_quiet(page):
    assert page.console_errors == []
    assert page.requests == [page.url]  # the page itself and nothing else


def test_run_page_in_browser_reads_back_the_reports_numbers(browser, tmp_path):
    report = make_report()
    page = _open(browser, tmp_path, "run.html", run_page(report))
    _assert_quiet(page)
    value = page.evaluate("id => document.getElementById(id).dataset.value", "final-test_accuracy")
    assert float(value) == report["final"]["test_accuracy"]
    shown = page.evaluate("document.getElementById('final-test_accuracy').textContent")
    assert shown == f'{report["final"]["test_accuracy"]:.4f}'
    rows = page.evaluate("""Array.from(document.querySelectorAll('#epochs tbody tr')).map(tr =>
        Object.fromEntries(Array.from(tr.cells).map(td => [td.dataset.key, parseFloat(td.dataset.value)])))""")
    assert rows == report["epochs"]
    per_class = page.evaluate("""Array.from(document.querySelectorAll('#per-class tbody tr')).map(tr =>
        [tr.cells[0].textContent, parseFloat(tr.querySelector('[data-key=accuracy]').dataset.value)])""")
    assert per_class == [[n, a] for n, a in zip(FASHION, report["per_class_accuracy"])]
    cells = page.evaluate("""Array.from(document.querySelectorAll('#confusion td[data-row]')).map(td =>
        [+td.dataset.row, +td.dataset.col, parseInt(td.dataset.value), parseInt(td.textContent)])""")
    assert len(cells) == 100
    for i, j, value, text in cells:
        assert value == text == report["confusion_matrix"][i][j]
    names = page.evaluate("Array.from(document.querySelectorAll('#confusion th.true')).map(th => th.textContent)")
    assert names == FASHION
    params = page.evaluate("""Object.fromEntries(Array.from(document.querySelectorAll('#hyperparameters td'))
        .map(td => [td.dataset.key, JSON.parse(td.dataset.value)]))""")
    assert params == report["hyperparameters"]
    worst = page.evaluate("parseFloat(document.getElementById('gradient-worst').dataset.value)")
    assert worst == report["gradient_check"]["worst_relative_error"]
    iterations = page.evaluate("""Array.from(document.querySelectorAll('#checkpoints tbody tr'))
        .map(tr => parseInt(tr.querySelector('[data-key=iteration]').dataset.value))""")
    assert iterations == [c["iteration"] for c in report["checkpoints"]]
    lines = page.evaluate("""['accuracy-plot', 'loss-plot', 'minibatch-plot'].map(id =>
        document.querySelectorAll('#' + id + ' polyline.line').length)""")
    assert lines == [2, 2, 1]


def _column(page, key):
    return page.evaluate("key => Array.from(document.querySelectorAll('#runs tbody tr')).map(tr => "
                         "tr.querySelector('[data-key=' + key + ']').dataset.value)", key)


def test_index_sorts_by_a_clicked_header(browser, tmp_path):
    rows = make_rows(12)
    page = _open(browser, tmp_path, "index.html", index_page(rows))
    _assert_quiet(page)
    accuracies = sorted(row["final_test_accuracy"] for row in rows)
    page.click("th[data-key=final_test_accuracy]")
    assert [float(v) for v in _column(page, "final_test_accuracy")] == accuracies[::-1]
    assert page.evaluate("document.querySelector('th[data-key=final_test_accuracy]').getAttribute('aria-sort')") \
        == "descending"
    page.click("th[data-key=final_test_accuracy]")
    assert [float(v) for v in _column(page, "final_test_accuracy")] == accuracies
    page.click("th[data-key=run_id]")
    natural = [[int(part) if part.isdigit() else part for part in re.split(r"(\d+)", row["run_id"])] for row in rows]
    assert _column(page, "run_id") == [row["run_id"] for _, row in sorted(zip(natural, rows), key=lambda p: p[0])]
    page.click("th[data-key=finished_at]")
    assert _column(page, "finished_at")[0] == str(datetime.datetime.fromisoformat(rows[-1]["finished_at"]).timestamp())
    hrefs = page.evaluate("Array.from(document.querySelectorAll('#runs tbody a')).map(a => a.getAttribute('href'))")
    assert sorted(hrefs) == sorted(row["href"] for row in rows)
    _assert_quiet(page)


def test_index_draws_the_curves_of_the_chosen_runs(browser, tmp_path):
    rows = make_rows(8)
    page = _open(browser, tmp_path, "index.html", index_page(rows))
    count = "document.querySelectorAll('#compare-plot polyline, #compare-plot path.line').length"
    assert page.evaluate(count) == 0
    page.check("input.choose[data-run='1']")
    assert page.evaluate(count) == 0  # one run is no comparison
    page.check("input.choose[data-run='4']")
    assert page.evaluate(count) == 2
    drawn = page.evaluate("Array.from(document.querySelectorAll('#compare-plot polyline')).map(p => "
                          "[p.dataset.run, p.getAttribute('points').split(' ').length])")
    assert drawn == [[rows[1]["run_id"], 20], [rows[4]["run_id"], 20]]
    assert page.evaluate("document.querySelectorAll('#compare-legend li').length") == 2
    page.check("input.choose[data-run='6']")
    assert page.evaluate(count) == 3
    page.uncheck("input.choose[data-run='1']")
    assert page.evaluate(count) == 2
    _assert_quiet(page)


def test_sweep_page_in_browser(browser, tmp_path):
    rows = make_rows(9)
    page = _open(browser, tmp_path, "sweep.html", sweep_page("sweep-1a2b3c4d", rows))
    _assert_quiet(page)
    shown = [float(v) for v in _column(page, "final_test_accuracy")]
    assert shown == sorted((row["final_test_accuracy"] for row in rows), reverse=True)
    assert page.evaluate("document.querySelectorAll('#sweep-plot polyline.line').length") == 9
    page.click("th[data-key=seed]")
    assert [int(v) for v in _column(page, "seed")] == list(range(8, -1, -1))


def test_screenshots_of_a_run_page_and_an_index(browser, tmp_path):
    shots = Path(os.environ.get("PAGES_SHOTS_DIR", "/tmp/pages-shots"))
    run = _open(browser, tmp_path, "run.html", run_page(make_report()))
    run.screenshot(shots / "run.png")
    index = _open(browser, tmp_path, "index.html", index_page(make_rows(4)))
    index.check("input.choose[data-run='0']")
    index.check("input.choose[data-run='2']")
    index.check("input.choose[data-run='3']")
    index.screenshot(shots / "index.png")
    sweep = _open(browser, tmp_path, "sweep.html", sweep_page("sweep-1a2b3c4d", make_rows(9)))
    sweep.screenshot(shots / "sweep.png")
    for name in ("run.png", "index.png", "sweep.png"):
        assert (shots / name).stat().st_size > 10_000
    for page in (run, index, sweep):
        _assert_quiet(page)


def test_empty_and_degenerate_inputs_still_make_pages():
    assert "0 runs" in index_page([])
    assert "no data" in sweep_page("sweep-empty", [])
    single = make_report(iterations=300)  # one evaluation before the first epoch ends, one final
    single["minibatch_loss"][5] = float("nan")
    page = run_page(single)
    assert page.count('<polyline class="line"') == 5
    rows = make_rows(3)
    rows[0]["curve"], rows[1]["final_test_accuracy"], rows[2]["finished_at"] = [], None, "yesterday"
    for page in (index_page(rows), sweep_page("sweep-x", rows)):
        assert "yesterday" in page and page.count("<tr data-run=") == 3


@pytest.mark.slow
def test_the_pages_a_sweep_writes_show_its_metrics_in_a_browser(browser, tmp_path, synthetic_source):
    """The pipeline's own pages, not fixtures: a 4-run Sweep, then the index, a run page and
    the sweep page read back in Chromium."""
    from runner import chain, run, workspace

    workdir = workspace(tmp_path / "w")
    done = run(chain(synthetic_source, "--hidden-sizes", "[16,24]", "--learning-rates", "[0.3,0.6]",
                     task="Sweep"), workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    artifacts = workdir / "artifacts"
    metrics = {p.parent.parent.name: json.loads(p.read_text()) for p in artifacts.glob("synthetic/h*/report/metrics.json")}
    assert len(metrics) == 4

    index = browser.open(artifacts / "index.html")
    _assert_quiet(index)
    shown = dict(zip(_column(index, "run_id"), (float(v) for v in _column(index, "final_test_accuracy"))))
    assert shown == {run_id: m["final"]["test_accuracy"] for run_id, m in metrics.items()}
    index.click("th[data-key=final_test_accuracy]")
    ordered = [float(v) for v in _column(index, "final_test_accuracy")]
    assert ordered == sorted(ordered, reverse=True)
    index.check("input.choose[data-run='0']")
    index.check("input.choose[data-run='2']")
    assert index.evaluate("document.querySelectorAll('#compare-plot polyline').length") == 2
    _assert_quiet(index)

    run_id, expected = next(iter(metrics.items()))
    page = browser.open(artifacts / "synthetic" / run_id / "report" / "index.html")
    _assert_quiet(page)
    value = page.evaluate("parseFloat(document.getElementById('final-test_accuracy').dataset.value)")
    assert value == expected["final"]["test_accuracy"]

    (sweep,) = artifacts.glob("synthetic/sweeps/*/index.html")
    page = browser.open(sweep)
    _assert_quiet(page)
    assert sorted(float(v) for v in _column(page, "final_test_accuracy")) == sorted(
        m["final"]["test_accuracy"] for m in metrics.values())
