"""pipeline.pages: the run, index and sweep pages, as strings and as a real browser shows them.

The browser tests run Debian's headless chromium (tests/browser.py) and are skipped only
where it is not installed. Screenshots of a run page and of an index go to
$PAGES_SHOTS_DIR (default /tmp/pages-shots) for a person to look at."""

import base64
import datetime
import html
import io
import json
import os
import re
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from browser import Browser
from pipeline.pages import BEST_COLUMN, clipped_path, index_page, line_plot, run_page, sweep_page

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
STAGES = {"DownloadDataset": 0.4, "NormalizeImages": 1.9, "EncodeLabels": 0.3, "CheckGradient": 0.1,
          "TrainNetwork": 3.4, "EvaluateNetwork": 0.2}


def make_report(iterations=10000, batch_size=100, seed=0, stage_seconds=None, run_id=None, class_names=FASHION,
                ran=STAGES):
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
        "stages": [{"task": name, "state": "ran" if name in ran else "cached", "seconds": seconds,
                    "finished_at": f"2026-12-01T20:5{k}:00+00:00"}
                   for k, (name, seconds) in enumerate((STAGES if stage_seconds is None else stage_seconds).items())],
        "per_class_precision": [float(confusion[k, k] / confusion[:, k].sum()) for k in range(10)],
        "mistakes": [{"index": 7 * k, "true": k % 10, "predicted": (k + 3) % 10, "confidence": 0.99 - k / 100,
                      "pixels": [int(v) for v in rng.integers(0, 256, 784)]} for k in range(16)],
        "environment": {"python": "3.11.2", "numpy": "2.4.6", "h5py": "3.16.0", "hdf5": "2.0.0", "luigi": "3.8.1",
                        "blas": {"name": "scipy-openblas", "version": "0.3.31", "loaded": "openblas", "threads": 1}},
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
    """Anything in a page that could make the browser fetch: src= but data: URIs, href= to a URL, url() but
    #ids, @import."""
    found = re.findall(r'\bsrc\s*=\s*"(?!data:image/png;base64,)|@import|url\((?!#)', page)
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
    rows = make_rows(100, points=20)
    for row in rows:
        row["curves"] = {key: row["curve"] for key in ("test_accuracy", "train_accuracy", "test_loss", "train_loss")}
    page = index_page(rows)
    assert len(page.encode("utf-8")) < 2_000_000
    assert _external_references(page) == []
    assert page.count("<tr data-run=") == 100


def test_text_is_escaped_everywhere():
    evil = '<script>alert("x")</script>&'
    report = make_report(run_id=evil, class_names=[evil] + FASHION[1:])
    report["hyperparameters"]["note"] = evil
    report["digests"]["data"] = {evil: "00"}
    report["mistakes"][0]["true"] = evil
    rows = make_rows(2)
    rows[0]["run_id"] = "</script><script>alert(1)</script>"
    rows[1]["href"] = "javascript:alert(1)"
    sweeps = [{"sweep_id": evil, "dataset": evil, "best_run_id": evil, "href": "javascript:alert(1)",
               "best_href": "JavaScript:alert(2)"}]
    for page in (run_page(report, sweeps=sweeps, index_href="javascript:alert(3)"), index_page(rows, sweeps=sweeps),
                 sweep_page(evil, rows, index_href="javascript:alert(4)")):
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
    report = make_report(ran={"TrainNetwork"})
    for key in ("gradient_check", "digests", "checkpoints", "minibatch_loss", "class_names"):
        del report[key]
    report["per_class_accuracy"][3] = None
    page = run_page(report)
    assert "not recorded" in page and "no samples" in page
    assert page.count('data-state="cached"') == 5 and page.count('data-state="ran"') == 1
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
    assert svg.count('<path class="line"') == 2
    assert "test &amp; more" in svg and ">Accuracy</text>" in svg and ">epoch</text>" in svg
    y_ticks = re.findall(r'text-anchor="end" font-size="11">([^<]+)<', svg)
    assert y_ticks == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    single = line_plot([{"label": "one", "points": [(3, 0.5)]}], title="t", x_label="x", y_label="y", plot_id="q")
    assert single.count('<path class="line"') == 1 and "nan" not in single
    large = line_plot([{"label": "l", "points": [(1, 2.0), (100000, 0.3)]}], title="t", x_label="iteration",
                      y_label="loss", plot_id="r")
    assert ">100k<" in large


def _box(svg):
    """(left, top, right, bottom) of a plot's axes, from the svg's data attributes."""
    d = dict(re.findall(r'data-(left|top|width|height)="([^"]+)"', svg.split(">", 1)[0]))
    left, top = float(d["left"]), float(d["top"])
    return left, top, left + float(d["width"]), top + float(d["height"])


def _path_points(d):
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+) (-?[\d.]+)", d)]


def test_no_coordinate_of_a_line_lies_outside_the_plot_box():
    series = [{"label": "dips below", "points": [(0, 0.05), (1, 0.6), (2, 0.8), (3, 0.85)]},
              {"label": "leaves and comes back", "points": [(0, 0.7), (1, 1.4), (2, -0.3), (3, 0.75)]},
              {"label": "outside", "points": [(0, 2.0), (3, 2.0)]}]
    svg = line_plot(series, title="t", x_label="epoch", y_label="accuracy", plot_id="p", y_range=(0.5, 1.0),
                    x_range=(0.5, 3))
    left, top, right, bottom = _box(svg)
    paths = re.findall(r'<path class="line"[^>]* d="([^"]*)"', svg)
    assert len(paths) == 3 and paths[2] == ""  # a line wholly outside draws nothing
    points = [p for d in paths for p in _path_points(d)]
    assert len(points) > 6
    assert all(left <= x <= right and top <= y <= bottom for x, y in points)
    circles = [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([^"]+)" cy="([^"]+)"', svg)]
    assert circles and all(left <= x <= right and top <= y <= bottom for x, y in circles)
    assert 'clip-path="url(#p-clip)"' in svg and f'<rect x="{left:g}" y="{top:g}"' in svg  # the clip is the box


def test_a_segment_leaving_the_box_ends_on_its_edge():
    box = (10, 20, 110, 120)
    assert clipped_path([(10, 70), (60, 170)], box) == "M10.0 70.0L35.0 120.0"  # crosses the bottom at x=35
    assert clipped_path([(0, 200), (60, 170), (110, 20)], box) == "M76.7 120.0L110.0 20.0"
    assert clipped_path([(20, 30), (200, 30), (30, 40)], box) == "M20.0 30.0L110.0 30.0M110.0 35.3L30.0 40.0"  # back in at y = 30 + 90 / 170 * 10
    assert clipped_path([(50, 50)], box) == "M50.0 50.0h0" and clipped_path([(5, 50)], box) == ""


def test_run_page_links_to_the_runs_index_and_known_sweeps():
    page = run_page(make_report(), sweeps=[{"sweep_id": "sweep-1", "href": "../../sweeps/sweep-1/index.html"}])
    assert '<a id="link-index" href="../../../index.html">' in page
    assert '<a id="link-sweep-0" href="../../sweeps/sweep-1/index.html">sweep sweep-1</a>' in page
    assert '<a id="link-index" href="../index.html">' in run_page(make_report(), index_href="../index.html")


def test_run_page_shows_the_checkpoints_epochs_and_the_stages_as_they_happened():
    report = make_report(iterations=1800, ran={"CheckGradient", "TrainNetwork", "EvaluateNetwork"})
    page = run_page(report)
    epochs = re.findall(r'<td class="num" data-key="epoch" data-value="([^"]*)">([^<]*)</td>',
                        page.split('id="checkpoints"')[1])
    assert epochs == [("1.0", "1"), ("2.0", "2"), ("3.0", "3")]
    states = re.findall(r'<tr data-task="([^"]+)" data-state="([^"]+)">', page)
    assert states == [("DownloadDataset", "cached"), ("NormalizeImages", "cached"), ("EncodeLabels", "cached"),
                      ("CheckGradient", "ran"), ("TrainNetwork", "ran"), ("EvaluateNetwork", "ran")]
    assert 'data-key="total" data-value="3.7"' in page  # 0.1 + 3.4 + 0.2: what ran in this command
    assert 'data-key="finished_at" data-value="2026-12-01T20:50:00+00:00"' in page  # when DownloadDataset ran
    assert '<span class="nw">2026-12-01</span> <span class="nw">20:50</span>' in page


def test_mistakes_are_pictures_of_their_pixels_with_their_class_names():
    from PIL import Image

    report = make_report()
    page = run_page(report)
    figures = re.findall(r'<figure class="mistake" data-index="(\d+)".*?src="data:image/png;base64,([^"]+)".*?'
                         r'<span class="pred">([^<]*)</span>.*?<span class="true">([^<]*)</span>', page)
    assert len(figures) == 16
    for (index, data, predicted, true), mistake in zip(figures, report["mistakes"]):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.size == (28, 28) and image.mode == "L"
        assert list(image.tobytes()) == mistake["pixels"]
        assert (int(index), predicted, true) == (mistake["index"], html.escape(FASHION[mistake["predicted"]]),
                                                 html.escape(FASHION[mistake["true"]]))
    assert '<span class="conf nw">99.0 %</span>' in page
    report["mistakes"] = []
    assert 'id="mistakes-none"' in run_page(report)


def test_odd_mistakes_and_curves_still_make_pages():
    report = make_report()
    report["mistakes"] = [{"index": 1, "true": 99, "predicted": -1, "confidence": None, "pixels": [300, -5] * 50},
                          {"index": 2, "true": 0, "predicted": 1, "confidence": 0.5, "pixels": [1, 2, 3]},
                          {"index": 3, "true": 0, "predicted": 1, "confidence": 0.5}]
    page = run_page(report)
    assert page.count('<figure class="mistake"') == 3 and page.count("data:image/png") == 1  # 100 pixels: 10 x 10
    assert page.count("no picture") == 2 and '<span class="true">99</span>' in page
    rows = make_rows(2)
    del rows[0]["curve"]
    rows[0]["curves"] = {"test_loss": [[0, float("nan")], [1, None], ["x", 0.5], [2, 0.4]], "made_up": [[0, 1]]}
    page = index_page(rows)
    data = json.loads(re.search(r'<script type="application/json" id="curves">(.*?)</script>', page).group(1))
    assert data["runs"][0]["curves"] == {"test_loss": [[2.0, 0.4]]} and data["metrics"] == ["test_accuracy",
                                                                                              "test_loss"]


def test_index_lists_the_sweeps_with_links_to_them_and_their_best_runs():
    rows = make_rows(4)
    sweeps = [{"sweep_id": "sweep-aa", "dataset": "mnist", "run_count": 4, "best_run_id": rows[2]["run_id"],
               "best_test_accuracy": 0.9, "finished_at": "2026-12-01T10:00:00+00:00",
               "href": "mnist/sweeps/sweep-aa/index.html"}]
    page = index_page(rows, sweeps=sweeps)
    assert 'id="sweep-count" data-value="1"' in page
    assert '<a href="mnist/sweeps/sweep-aa/index.html">sweep-aa</a>' in page
    assert f'<a href="{rows[2]["href"]}">{rows[2]["run_id"]}</a></td>' in page.split('id="sweeps"')[1]
    assert 'id="sweep-count" data-value="0"' in index_page(rows)
    page = index_page(rows[:2], sweeps=sweeps)  # the best run removed since: not named, not linked
    assert rows[2]["run_id"] not in page and "no longer in the index" in page


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
        [tr.cells[0].textContent, parseFloat(tr.querySelector('[data-key=recall]').dataset.value),
         parseFloat(tr.querySelector('[data-key=precision]').dataset.value)])""")
    assert per_class == [[n, r, p] for n, r, p in zip(FASHION, report["per_class_accuracy"],
                                                       report["per_class_precision"])]
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
        document.querySelectorAll('#' + id + ' path.line').length)""")
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
    count = "document.querySelectorAll('#compare-plot-test_accuracy path.line').length"
    assert page.evaluate(count) == 0
    page.check("input.choose[data-run='1']")
    assert page.evaluate(count) == 0  # one run is no comparison
    page.check("input.choose[data-run='4']")
    assert page.evaluate(count) == 2
    drawn = page.evaluate("Array.from(document.querySelectorAll('#compare-plot-test_accuracy path.line')).map(p => "
                          "[p.dataset.run, p.getAttribute('d').split('L').length])")
    assert drawn == [[rows[1]["run_id"], 20], [rows[4]["run_id"], 20]]  # 19 segments, the first cut at the axis
    assert page.evaluate("document.querySelectorAll('#compare-legend li').length") == 2
    page.check("input.choose[data-run='6']")
    assert page.evaluate(count) == 3
    page.uncheck("input.choose[data-run='1']")
    assert page.evaluate(count) == 2
    _assert_quiet(page)


def _drawn_inside(page, svg_id):
    """Every coordinate of the lines drawn in an svg lies inside its plot box: (count of lines, True/False)."""
    return page.evaluate("""id => {
        const svg = document.getElementById(id), d = svg.dataset;
        const box = [+d.left, +d.top, +d.left + +d.width, +d.top + +d.height];
        const lines = Array.from(svg.querySelectorAll('path.line'));
        const numbers = lines.flatMap(p => Array.from(p.getAttribute('d').matchAll(/[ML](-?[\\d.]+) (-?[\\d.]+)/g))
            .map(m => [+m[1], +m[2]]));
        return [lines.length, numbers.length > 0 &&
                numbers.every(([x, y]) => x >= box[0] && x <= box[2] && y >= box[1] && y <= box[3])];
    }""", svg_id)


def test_index_compares_any_figure_and_keeps_the_curves_inside_the_axes(browser, tmp_path):
    rows = make_rows(5)
    for row in rows:  # from 0.1 (the untrained start, below the fitted axis) to 0.6 and up; losses the mirror image
        row["curve"] = [[e, a if e == 0 else 0.6 + a / 4] for e, a in row["curve"]]
        row["curves"] = {"test_accuracy": row["curve"],
                         "train_accuracy": [[e, min(1.0, a + 0.01)] for e, a in row["curve"]],
                         "test_loss": [[e, 2.3 - 2.0 * a] for e, a in row["curve"]],
                         "train_loss": [[e, 2.25 - 2.0 * a] for e, a in row["curve"]]}
    page = _open(browser, tmp_path, "index.html", index_page(rows))
    options = page.evaluate("Array.from(document.querySelectorAll('#compare-metric option')).map(o => o.value)")
    assert options == ["test_accuracy", "train_accuracy", "test_loss", "train_loss"]
    for k in (0, 2, 4):
        page.check(f"input.choose[data-run='{k}']")
    assert float(page.evaluate("document.getElementById('compare-plot-test_accuracy').dataset.yMin")) > 0.1
    assert float(page.evaluate("document.getElementById('compare-plot-test_loss').dataset.yMax")) < 2.1
    assert _drawn_inside(page, "compare-plot-test_accuracy") == [3, True]  # epoch 0 (0.1) lies below the axis
    page._page.select_option("#compare-metric", "test_loss")
    assert _drawn_inside(page, "compare-plot-test_loss") == [3, True]  # epoch 0 (2.1) lies above it
    assert _drawn_inside(page, "compare-plot-test_accuracy")[0] == 0
    visible = page.evaluate("Array.from(document.querySelectorAll('div.metric-plot')).filter(d => !d.hidden)"
                            ".map(d => d.dataset.metric)")
    assert visible == ["test_loss"]
    assert page.evaluate("document.getElementById('compare-hint').textContent") == \
        "3 runs compared: test-set loss per epoch."
    drawn = page.evaluate("Array.from(document.querySelectorAll('#compare-plot-test_loss path.line'))"
                          ".map(p => p.dataset.run)")
    assert drawn == [rows[k]["run_id"] for k in (0, 2, 4)]
    _assert_quiet(page)


def test_sweep_page_in_browser(browser, tmp_path):
    rows = make_rows(9)
    page = _open(browser, tmp_path, "sweep.html", sweep_page("sweep-1a2b3c4d", rows))
    _assert_quiet(page)
    shown = [float(v) for v in _column(page, "final_test_accuracy")]
    assert shown == sorted((row["final_test_accuracy"] for row in rows), reverse=True)
    assert page.evaluate("document.querySelectorAll('#sweep-plot path.line').length") == 9
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
    assert page.count('<path class="line"') == 5
    rows = make_rows(3)
    rows[0]["curve"], rows[1]["final_test_accuracy"], rows[2]["finished_at"] = [], None, "yesterday"
    for page in (index_page(rows), sweep_page("sweep-x", rows)):
        assert "yesterday" in page and page.count("<tr data-run=") == 3


def _links_resolve(page):
    """Assert every <a href> of a loaded page is relative and names an existing file (or an id on the
    page), and that the page fetched nothing but itself; returns the hrefs."""
    links = page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => [a.getAttribute('href'), a.href])")
    for raw, absolute in links:
        assert not re.match(r"[a-z][a-z0-9+.-]*:", raw), f"not relative: {raw}"
        if raw.startswith("#"):
            assert page.evaluate("id => document.getElementById(id) !== null", raw[1:]), raw
        else:
            assert Path(urllib.parse.unquote(urllib.parse.urlsplit(absolute).path)).is_file(), f"broken: {raw}"
    assert not [url for url in page.requests if not url.startswith("file:")]  # no http(s), nothing but the file
    _assert_quiet(page)
    return [raw for raw, _ in links]


@pytest.mark.slow
def test_the_pages_a_sweep_writes_show_its_metrics_in_a_browser(browser, tmp_path, synthetic_source):
    """The pipeline's own pages, not fixtures: a 3-run Sweep, then one more run in a second
    command; the index, the run pages and the sweep page read back in Chromium, every link
    followed to a file. Screenshots go to $PAGES_SHOTS_DIR (default /tmp/pages-shots)."""
    from runner import chain, run, workspace

    shots = Path(os.environ.get("PAGES_SHOTS_DIR", "/tmp/pages-shots"))
    workdir = workspace(tmp_path / "w")
    done = run(chain(synthetic_source, "--hidden-sizes", "[8,16,24]", "--learning-rates", "[0.6]",
                     task="Sweep"), workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    artifacts = workdir / "artifacts"
    reports = {p.parent.parent.name: json.loads(p.read_text()) for p in artifacts.glob("synthetic/h*/report/report.json")}
    assert len(reports) == 3
    for built in reports.values():  # one command made everything: every stage ran, the download too
        assert [(s["task"], s["state"]) for s in built["stages"]] == [
            (name, "ran") for name in STAGES]
        assert all(s["seconds"] is not None and s["finished_at"] for s in built["stages"])
        assert [c["epoch"] for c in built["checkpoints"]] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    done = run(chain(synthetic_source, "--hidden-size", "12"), workdir)  # a second command: the data is there
    assert done.returncode == 0, done.stderr[-2000:]
    (later,) = artifacts.glob("synthetic/h12-*/report/report.json")
    assert [(s["task"], s["state"]) for s in json.loads(later.read_text())["stages"]] == [
        ("DownloadDataset", "cached"), ("NormalizeImages", "cached"), ("EncodeLabels", "cached"),
        ("CheckGradient", "ran"), ("TrainNetwork", "ran"), ("EvaluateNetwork", "ran")]
    reports[later.parent.parent.name] = json.loads(later.read_text())

    index = browser.open(artifacts / "index.html")
    hrefs = _links_resolve(index)
    (sweep,) = artifacts.glob("synthetic/sweeps/*/index.html")
    assert f"synthetic/sweeps/{sweep.parent.name}/index.html" in hrefs
    assert {f"synthetic/{run_id}/report/index.html" for run_id in reports} <= set(hrefs)
    shown = dict(zip(_column(index, "run_id"), (float(v) for v in _column(index, "final_test_accuracy"))))
    assert shown == {run_id: r["final"]["test_accuracy"] for run_id, r in reports.items()}
    index.click("th[data-key=final_test_accuracy]")
    ordered = [float(v) for v in _column(index, "final_test_accuracy")]
    assert ordered == sorted(ordered, reverse=True)
    for k in (0, 1, 2):
        index.check(f"input.choose[data-run='{k}']")
    index._page.select_option("#compare-metric", "test_loss")
    assert _drawn_inside(index, "compare-plot-test_loss") == [3, True]
    index.screenshot(shots / "pipeline-index-loss.png")
    _assert_quiet(index)

    worst = min(reports, key=lambda run_id: reports[run_id]["final"]["test_accuracy"])
    for run_id, built in reports.items():
        page = browser.open(artifacts / "synthetic" / run_id / "report" / "index.html")
        assert "../../../index.html" in _links_resolve(page)
        value = page.evaluate("parseFloat(document.getElementById('final-test_accuracy').dataset.value)")
        assert value == built["final"]["test_accuracy"]
        assert page.evaluate("document.querySelectorAll('figure.mistake img').length") == len(built["mistakes"])
        if run_id == worst:
            page.screenshot(shots / "pipeline-run.png")

    page = browser.open(sweep)
    hrefs = _links_resolve(page)
    assert "../../../index.html" in hrefs and len(hrefs) == 4
    assert sorted(float(v) for v in _column(page, "final_test_accuracy")) == sorted(
        r["final"]["test_accuracy"] for run_id, r in reports.items() if not run_id.startswith("h12-"))
    finished = page.evaluate("Array.from(document.querySelectorAll('#runs td[data-key=finished_at]'))"
                             ".map(td => td.dataset.text)")
    assert sorted(finished) == sorted(r["created_at"] for run_id, r in reports.items() if not run_id.startswith("h12-"))
    page.screenshot(shots / "pipeline-sweep.png")
