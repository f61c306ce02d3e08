"""HTML pages of runs and sweeps, as self-contained strings (pure functions, no I/O).

Each page is one HTML document with its CSS inline and its plots as inline SVG drawn here;
it loads nothing (a Content-Security-Policy forbids every fetch), so it works from file://
and offline. Every figure taken from the input dicts is also kept exactly, in a
`data-value` attribute (Python's repr for floats, which JavaScript's parseFloat reads back
to the same double), next to the rounded text a reader sees.

    run_page(report)            one run's report, linked to the runs index
    index_page(runs, sweeps)    every run and sweep: sortable tables, and plots comparing the chosen runs
    sweep_page(sweep_id, runs)  a sweep's runs, best final test accuracy first, all curves together
    line_plot(series, ...)      the SVG line plot the three pages share, lines cut to its axes
    plots(report)               a run's plots as stand-alone SVG files (report.md shows them)

Links between pages are relative (a copied tree or a bucket keeps them working); pictures
are PNG data: URIs.
"""

import base64
import datetime
import html
import json
import math
import numbers
import struct
import zlib

import numpy as np

__all__ = ["run_page", "index_page", "sweep_page", "line_plot", "plots", "sweep_plot", "curves_of",
           "clipped_path", "png_data_uri", "METRICS"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
DASHES = ("", "6 3", "2 3", "8 3 2 3")
STAGES = ("DownloadDataset", "NormalizeImages", "EncodeLabels", "CheckGradient", "TrainNetwork", "EvaluateNetwork")
MINIBATCH_BINS = 400  # at most this many points of the mini-batch loss curve reach the page

# Nothing may be fetched: not a script, a style sheet, a font, an image or a favicon.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

_CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --bg: #ffffff; --panel: #f5f7fa; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1320px; padding: 20px 24px 48px; color: var(--fg); background: var(--bg);
       font: 14px/1.45 system-ui, "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
p.meta, .muted { color: var(--muted); }
p.meta { margin: 0 0 16px; }
a { color: var(--accent); }
code, .mono { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 12px; }
code.digest { word-break: break-all; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: middle; }
thead th { background: var(--panel); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.final td { font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 4px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px;
        min-width: 150px; }
.card .label { color: var(--muted); font-size: 12px; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px; }
svg.plot { width: 100%; height: auto; display: block; font-family: system-ui, "DejaVu Sans", sans-serif; }
svg.plot text { fill: var(--fg); }
.badge { display: inline-block; padding: 2px 10px; border-radius: 10px; font-weight: 600; color: #fff; }
.badge.ok { background: #2e7d32; } .badge.bad { background: #c62828; }
.bar { height: 10px; background: #6d9ed8; border-radius: 2px; min-width: 1px; }
td.barcell { width: 220px; }
table.confusion td { text-align: right; min-width: 44px; font-variant-numeric: tabular-nums; border: 1px solid #fff; }
table.confusion th.pred { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
                          font-weight: 500; font-size: 12px; padding: 6px 2px; vertical-align: bottom; }
table.confusion th.true, table.confusion th.sum { font-weight: 500; font-size: 12px; white-space: nowrap; }
table.confusion th.sum { color: var(--muted); }
table.confusion th.corner { font-size: 12px; color: var(--muted); vertical-align: bottom; }
.scroll { overflow-x: auto; }
table.sortable th[data-type] { cursor: pointer; user-select: none; }
table.sortable th[data-type] button { all: unset; cursor: pointer; }
table.sortable th[data-type]::after { content: " \\2195"; color: #9aa3b2; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; color: var(--fg); }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; color: var(--fg); }
ul.legend { list-style: none; padding: 0; margin: 6px 0; display: flex; flex-wrap: wrap; gap: 4px 16px;
            font-size: 12px; }
ul.legend .swatch { display: inline-block; width: 24px; height: 6px; vertical-align: middle; margin-right: 6px; }
table.runs { font-size: 13px; }
table.runs th, table.runs td { padding: 4px 6px; }
table.runs td { white-space: nowrap; }
table.runs td[data-key=finished_at] { white-space: normal; }
.nw { white-space: nowrap; }
table.runs thead th { white-space: normal; vertical-align: bottom; min-width: 3.5em; }
table.runs thead th[data-key=best_test_accuracy] { min-width: 9em; }
nav.crumbs { margin: 0 0 10px; font-size: 13px; }
.side { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
.side > div { min-width: 0; max-width: 100%; } .side > div + div { flex: 1 1 0; min-width: 300px; }
.side p { max-width: 36em; }
#per-class td.barcell { width: 80px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)); gap: 10px; margin: 8px 0; }
figure.mistake { margin: 0; padding: 6px; background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
                 text-align: center; font-size: 12px; line-height: 1.35; }
figure.mistake img { image-rendering: pixelated; display: block; margin: 0 auto 4px; background: #000; }
figure.mistake .pred { color: #c62828; font-weight: 600; }
figure.mistake .true { color: #2e7d32; font-weight: 600; }
.state { display: inline-block; padding: 0 8px; border-radius: 8px; font-size: 12px; }
.state.ran { background: #e3efff; color: #1f5fa8; } .state.cached { background: #eceff3; color: #5b6475; }
.bar.old { background: #c5ccd8; }
select { font: inherit; padding: 2px 4px; }
.note { background: #fff8e1; border: 1px solid #f3d98b; border-radius: 6px; padding: 8px 12px; }
"""


# ---------------------------------------------------------------------------------------------
# small helpers

def _esc(value):
    return html.escape("" if value is None else str(value), quote=True)


def _exact(value):
    """The machine-readable form of a value for a data-value attribute ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return str(value)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _fixed(value, digits=4):
    if not _is_number(value):
        return "—"
    return f"{float(value):.{digits}f}"


def _sci(value):
    return f"{float(value):.2e}" if _is_number(value) else "—"


def _epoch_text(value):
    if not _is_number(value):
        return "—"
    value = float(value)
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def _td(value, text=None, key=None, cls="num", extra=""):
    """A cell showing `text` (default: the value) that keeps the exact value in data-value."""
    shown = _esc(value) if text is None else text
    key_attr = f' data-key="{_esc(key)}"' if key is not None else ""
    cls_attr = f' class="{cls}"' if cls else ""
    return f'<td{cls_attr}{key_attr} data-value="{_esc(_exact(value))}"{extra}>{shown}</td>'


def _json_script(element_id, data):
    """A <script type="application/json"> block; '<' is escaped so the text cannot close the tag."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{_esc(element_id)}">{text}</script>'


def _page(title, body, script=""):
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
            f"{script}</body>\n</html>\n")


def _timestamp(text):
    """Seconds since the epoch of an ISO 8601 date-time (naive ones taken as UTC), or None."""
    try:
        moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _finite(value):
    return _is_number(value) and math.isfinite(float(value))


# ---------------------------------------------------------------------------------------------
# the SVG line plot

def _nice_step(span, count):
    raw = span / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if raw <= multiple * magnitude * (1 + 1e-9):
            return multiple * magnitude
    return 10 * magnitude


def _fit_range(values, bounds=None, count=5):
    """A range a little wider than the values', on round numbers, kept inside `bounds`."""
    values = [float(v) for v in values if _finite(v)]
    if not values:
        return (0.0, 1.0)
    low, high = min(values), max(values)
    if high == low:
        pad = abs(low) * 0.05 or 0.5
        low, high = low - pad, high + pad
    else:
        pad = (high - low) * 0.06
        low, high = low - pad, high + pad
    step = _nice_step(high - low, count)
    low, high = math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step
    if bounds:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return low, high


def _ticks(low, high, count):
    step = _nice_step(high - low, count)
    first = math.ceil(low / step - 1e-9)
    ticks = []
    k = first
    while k * step <= high + step * 1e-9:
        ticks.append(k * step)
        k += 1
    return ticks, step


def _tick_label(value, step):
    if abs(value) < step * 1e-9:
        value = 0.0
    if step >= 1 and abs(value) >= 10000:
        return f"{value / 1000:g}k"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step / 10.0 ** -decimals, 6) % 1:  # a step like 0.25 needs one more digit
        decimals += 1
    return f"{value:.{decimals}f}"


def _text_width(text, size=12):
    return 0.62 * size * len(text)


def _clip_segment(ax, ay, bx, by, box):
    """The part of the segment a-b inside box (left, top, right, bottom), or None (Liang-Barsky)."""
    left, top, right, bottom = box
    t0, t1, dx, dy = 0.0, 1.0, bx - ax, by - ay
    for p, q in ((-dx, ax - left), (dx, right - ax), (-dy, ay - top), (dy, bottom - ay)):
        if p == 0:
            if q < 0:
                return None
        elif p < 0:
            t0 = max(t0, q / p)
        else:
            t1 = min(t1, q / p)
    if t0 > t1:
        return None
    return (ax + t0 * dx, ay + t0 * dy), (ax + t1 * dx, ay + t1 * dy)


def _inside(x, y, box):
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def clipped_path(pixels, box):
    """SVG path data through pixel points [(x, y)], cut to box (left, top, right, bottom): what
    lies outside is dropped and a segment crossing an edge ends on it, so every coordinate of
    the path lies in the box. A lone point inside is drawn as a dot."""
    def at(x, y):
        return f"{min(max(x, box[0]), box[2]):.1f} {min(max(y, box[1]), box[3]):.1f}"

    if len(pixels) == 1:
        return f"M{at(*pixels[0])}h0" if _inside(*pixels[0], box) else ""
    parts, pen = [], None
    for (ax, ay), (bx, by) in zip(pixels, pixels[1:]):
        segment = _clip_segment(ax, ay, bx, by, box)
        if segment is None:
            pen = None
            continue
        start, end = at(*segment[0]), at(*segment[1])
        if start != pen:
            parts.append(f"M{start}")
        parts.append(f"L{end}")
        pen = end
    return "".join(parts)


def line_plot(series, *, title, x_label, y_label, plot_id, x_range=None, y_range=None, y_bounds=None,
              width=640, height=300, markers=None, standalone=False) -> str:
    """An <svg> line plot: title, axes with ticks and labels, grid, and a legend below.

    series: [{"label": str, "points": [(x, y), ...], "color": optional css colour,
    "dash": optional stroke-dasharray, "band": optional [(x, low, high), ...] drawn shaded}].
    Ranges default to the data's, padded to round numbers (y kept inside y_bounds if given).
    Lines are <path class="line"> in <g class="series">, cut where they leave the plot box (no
    coordinate lies outside it); the svg's data-* attributes give the data-to-pixel mapping, so
    a script can add lines of its own. `plot_id` becomes the
    svg's id (and names its clip path). markers: dots at the points (default: 30 points or fewer).
    standalone: sized and styled for a file of its own rather than a page.
    """
    series = [s for s in series if s.get("points") or s.get("band")]
    xs = [p[0] for s in series for p in s.get("points", ())] + [b[0] for s in series for b in s.get("band", ())]
    ys = [p[1] for s in series for p in s.get("points", ())]
    ys += [v for s in series for b in s.get("band", ()) for v in b[1:]]
    finite_xs = [float(x) for x in xs if _finite(x)]
    if x_range:
        x0, x1 = x_range
    elif finite_xs:  # x spans the data exactly, with no padding
        x0, x1 = min(finite_xs), max(finite_xs)
    else:
        x0, x1 = 0.0, 1.0
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x0 + 0.5
    y0, y1 = y_range if y_range else _fit_range(ys, y_bounds)
    if y1 <= y0:
        y1 = y0 + 1.0

    left, right, top = 64, 18, 34
    plot_w, plot_h = width - left - right, height - top - 48
    # the legend: entries flow left to right and wrap
    entries, row, cursor = [], 0, left
    for index, s in enumerate(series):
        label = str(s.get("label", ""))
        entry_w = 34 + _text_width(label)
        if cursor + entry_w > width - right and cursor > left:
            row, cursor = row + 1, left
        entries.append((cursor, row, index, label))
        cursor += entry_w + 14
    legend_h = (row + 1) * 18 + 6 if series else 0
    total_h = height + legend_h

    def px(x):
        return left + (float(x) - x0) / (x1 - x0) * plot_w

    def py(y):
        return top + plot_h - (float(y) - y0) / (y1 - y0) * plot_h

    def color(index):
        return series[index].get("color") or PALETTE[index % len(PALETTE)]

    def dash(index):
        d = series[index].get("dash", DASHES[(index // len(PALETTE)) % len(DASHES)])
        return f' stroke-dasharray="{d}"' if d else ""

    clip = f"{plot_id}-clip"
    box = (left, top, left + plot_w, top + plot_h)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="{_esc(plot_id)}" '
           f'viewBox="0 0 {width} {total_h}" role="img" aria-label="{_esc(title)}" '
           f'data-x-min="{x0!r}" data-x-max="{x1!r}" data-y-min="{y0!r}" data-y-max="{y1!r}" '
           f'data-left="{left}" data-top="{top}" data-width="{plot_w}" data-height="{plot_h}" '
           + (f'width="{width}" height="{total_h}" font-family="DejaVu Sans, Arial, sans-serif">' if standalone
              else f'style="max-width:{width}px">'),
           f"<title>{_esc(title)}</title>",
           f'<defs><clipPath id="{_esc(clip)}"><rect x="{left}" y="{top}" width="{plot_w}" '
           f'height="{plot_h}"/></clipPath></defs>',
           f'<text x="{left + plot_w / 2:.1f}" y="20" text-anchor="middle" font-size="14" '
           f'font-weight="600">{_esc(title)}</text>']
    y_ticks, y_step = _ticks(y0, y1, 5)
    for t in y_ticks:
        y = py(t)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ec"/>'
                   f'<text x="{left - 7}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
                   f'{_tick_label(t, y_step)}</text>')
    x_ticks, x_step = _ticks(x0, x1, max(2, min(8, plot_w // 70)))
    for t in x_ticks:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 5}" stroke="#555"/>'
                   f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle" font-size="11">'
                   f'{_tick_label(t, x_step)}</text>')
    out.append(f'<path d="M{left} {top}V{top + plot_h}H{left + plot_w}" fill="none" stroke="#555"/>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 38}" text-anchor="middle" '
               f'font-size="12">{_esc(x_label)}</text>')
    out.append(f'<text transform="translate(15 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
               f'font-size="12">{_esc(y_label)}</text>')
    out.append(f'<g class="series" clip-path="url(#{_esc(clip)})">')
    dots = []
    for index, s in enumerate(series):
        band = [b for b in s.get("band", ()) if all(_finite(v) for v in b)]
        if band:
            upper = " ".join(f"{px(x):.1f},{py(hi):.1f}" for x, lo, hi in band)
            lower = " ".join(f"{px(x):.1f},{py(lo):.1f}" for x, lo, hi in reversed(band))
            out.append(f'<polygon class="band" points="{upper} {lower}" fill="{color(index)}" '
                       f'fill-opacity="0.18" stroke="none"/>')
        points = [(px(x), py(y)) for x, y in s.get("points", ()) if _finite(x) and _finite(y)]
        if points:
            out.append(f'<path class="line" data-label="{_esc(s.get("label", ""))}" d="{clipped_path(points, box)}" '
                       f'fill="none" stroke="{color(index)}" stroke-width="2" stroke-linejoin="round" '
                       f'stroke-linecap="round"{dash(index)}/>')
            if markers if markers is not None else len(points) <= 30:  # whole dots, outside the clip
                dots.append("".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{color(index)}"/>'
                                    for x, y in points if _inside(x, y, box)))
    out.append("</g>")
    if dots:
        out.append(f'<g class="markers">{"".join(dots)}</g>')
    if not series:
        out.append(f'<text class="empty" x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
                   f'text-anchor="middle" font-size="12" fill="#888">no data</text>')
    for x, row, index, label in entries:
        y = height + 6 + row * 18
        out.append(f'<g class="legend-entry"><line x1="{x:.1f}" x2="{x + 24:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="{color(index)}" stroke-width="2.5"{dash(index)}/>'
                   f'<text x="{x + 30:.1f}" y="{y + 4:.1f}" font-size="12">{_esc(label)}</text></g>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# one run

METRICS = {  # key of an epoch row: how the pages name it
    "test_accuracy": "test accuracy", "train_accuracy": "train accuracy", "validation_accuracy": "validation accuracy",
    "test_loss": "test-set loss", "train_loss": "train-set loss", "validation_loss": "validation-set loss"}


def _class_names(report):
    names = report.get("class_names") or []
    count = len(report.get("confusion_matrix") or []) or len(report.get("per_class_accuracy") or []) or len(names)
    return [str(names[k]) if k < len(names) else str(k) for k in range(max(count, len(names)))]


def _has(rows, key):
    return any(_finite(row.get(key)) for row in rows)


def _minibatch_series(losses):
    """Mean, min and max of the mini-batch loss over at most MINIBATCH_BINS bins of iterations."""
    losses = np.asarray(losses if losses is not None else [], dtype=np.float64)
    if losses.size == 0:
        return []
    iterations = np.arange(1, losses.size + 1, dtype=np.float64)
    bins = min(MINIBATCH_BINS, losses.size)
    points, band = [], []
    for chunk_x, chunk in zip(np.array_split(iterations, bins), np.array_split(losses, bins)):
        finite = chunk[np.isfinite(chunk)]
        if finite.size == 0:
            continue
        x = float(chunk_x.mean())
        points.append((x, float(finite.mean())))
        band.append((x, float(finite.min()), float(finite.max())))
    if bins == losses.size:
        return [{"label": "mini-batch loss", "points": points, "color": PALETTE[0]}]
    per_bin = losses.size // bins
    about = "" if losses.size % bins == 0 else "about "
    return [{"label": f"mean of each {about}{per_bin} iterations (band: lowest to highest)", "points": points,
             "band": band, "color": PALETTE[0]}]


def _card(element_id, label, value, text):
    return (f'<div class="card"><div class="label">{_esc(label)}</div>'
            f'<div class="value" id="{_esc(element_id)}" data-value="{_esc(_exact(value))}">{text}</div></div>')


def _epoch_keys(epochs):
    """The figures of the epoch rows, in table order: train, validation (when present), test."""
    keys = ["train_accuracy", "validation_accuracy", "test_accuracy", "train_loss", "validation_loss", "test_loss"]
    return [key for key in keys if not key.startswith("validation") or _has(epochs, key)]


def _epochs_section(report):
    epochs = report.get("epochs") or []
    final = report.get("final") or (epochs[-1] if epochs else {})
    cards = "".join(_card(f"final-{key}", f"final {METRICS[key]}", final.get(key), _fixed(final.get(key)))
                    for key in ("test_accuracy", "validation_accuracy", "train_accuracy", "test_loss",
                                "validation_loss", "train_loss")
                    if not key.startswith("validation") or _finite(final.get(key)))
    cards += _card("final-epoch", "epochs trained", final.get("epoch"), _epoch_text(final.get("epoch")))
    cards += _card("final-iteration", "iterations", final.get("iteration"), _esc(final.get("iteration", "—")))

    keys = _epoch_keys(epochs)
    accuracy, loss = _accuracy_plot(epochs), _loss_plot(epochs)
    rows = []
    for index, row in enumerate(epochs):
        cls = ' class="final"' if index == len(epochs) - 1 else ""
        rows.append(f"<tr{cls}>" + _td(row.get("epoch"), _epoch_text(row.get("epoch")), "epoch")
                    + _td(row.get("iteration"), None, "iteration")
                    + "".join(_td(row.get(key), _fixed(row.get(key)), key) for key in keys) + "</tr>")
    heads = "".join(f'<th class="num">{_esc(METRICS[key])}</th>' for key in keys)
    table = ('<table id="epochs"><thead><tr><th class="num">epoch</th><th class="num">iteration</th>'
             f'{heads}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
             '<p class="muted">The last row is the final model. Accuracy and mean cross-entropy over the whole '
             'training' + (', validation' if "validation_accuracy" in keys else '')
             + ' and test sets, at each evaluated checkpoint.</p>')
    return (f'<div class="cards">{cards}</div><h2 id="per-epoch">Accuracy and loss per epoch</h2>'
            f'<div class="plots"><div>{accuracy}</div><div>{loss}</div></div>{table}')


def _epoch_curve(epochs, key):
    return [(row.get("epoch"), row.get(key)) for row in epochs]


def _split_series(epochs, kind):
    return [{"label": part, "points": _epoch_curve(epochs, f"{part}_{kind}"), "color": color}
            for part, color in (("train", PALETTE[0]), ("validation", PALETTE[2]), ("test", PALETTE[1]))
            if part != "validation" or _has(epochs, f"validation_{kind}")]


def _accuracy_plot(epochs, standalone=False):
    return line_plot(_split_series(epochs, "accuracy"), title="Accuracy per epoch", x_label="epoch",
                     y_label="accuracy", plot_id="accuracy-plot", y_bounds=(0.0, 1.0), width=560, height=300,
                     standalone=standalone)


def _loss_plot(epochs, standalone=False):
    return line_plot(_split_series(epochs, "loss"), title="Loss per epoch (cross-entropy)", x_label="epoch",
                     y_label="loss", plot_id="loss-plot", y_bounds=(0.0, math.inf), width=560, height=300,
                     standalone=standalone)


def _minibatch_plot(losses, standalone=False):
    count = 0 if losses is None else len(losses)
    return line_plot(_minibatch_series(losses), title="Mini-batch loss during training", x_label="iteration",
                     y_label="loss", plot_id="minibatch-plot", y_bounds=(0.0, math.inf), width=1000, height=300,
                     x_range=(0, count) if count else None, markers=False, standalone=standalone)


def plots(report: dict) -> dict:
    """A run's plots as stand-alone SVG files: {"accuracy.svg", "loss.svg", "minibatch_loss.svg": text}."""
    epochs = report.get("epochs") or []
    return {"accuracy.svg": _accuracy_plot(epochs, True), "loss.svg": _loss_plot(epochs, True),
            "minibatch_loss.svg": _minibatch_plot(report.get("minibatch_loss"), True)}


def _minibatch_section(report):
    losses = report.get("minibatch_loss")
    count = 0 if losses is None else len(losses)
    plot = _minibatch_plot(losses)
    note = (f'<p class="muted" id="minibatch-count" data-value="{count}">{count} iterations')
    if count > MINIBATCH_BINS:
        note += (f"; the line is the mean loss of each of {MINIBATCH_BINS} runs of consecutive iterations "
                 "and the shaded band their lowest and highest loss")
    return f"<h2>Mini-batch loss</h2>{plot}{note}.</p>"


def _heat(fraction, diagonal):
    """Background and text colour of a confusion cell holding `fraction` of its true class."""
    if fraction <= 0:
        return "#ffffff", "#9aa3b2"
    strength = fraction if diagonal else min(1.0, math.sqrt(fraction) * 1.3)
    if diagonal:
        light = 96 - 58 * strength
        background = f"hsl(212, 62%, {light:.0f}%)"
    else:
        light = 96 - 46 * strength
        background = f"hsl(4, 72%, {light:.0f}%)"
    return background, ("#ffffff" if light < 60 else "#1d2330")


def _shares(matrix, axis):
    """Diagonal over row (axis=1: recall) or column (axis=0: precision) sums; None where the sum is 0."""
    matrix = np.asarray(matrix, dtype=np.int64)
    totals = matrix.sum(axis=axis)
    return [float(matrix[k, k] / totals[k]) if totals[k] else None for k in range(matrix.shape[0])]


def _confusion_section(report):
    matrix = report.get("confusion_matrix")
    names = _class_names(report)
    if not matrix:
        return "<h2>Confusion matrix</h2><p class=\"muted\">not recorded</p>"
    recall = report.get("per_class_accuracy") or _shares(matrix, 1)
    precision = report.get("per_class_precision") or _shares(matrix, 0)
    heads = "".join(f'<th class="pred" scope="col" title="predicted {_esc(names[k])}">{_esc(names[k])}</th>'
                    for k in range(len(matrix[0])))
    rows = []
    for i, counts in enumerate(matrix):
        total = sum(int(c) for c in counts)
        cells = []
        for j, count in enumerate(counts):
            background, colour = _heat(int(count) / total if total else 0.0, i == j)
            cells.append(f'<td data-row="{i}" data-col="{j}" data-value="{int(count)}" '
                         f'style="background:{background};color:{colour}" '
                         f'title="true {_esc(names[i])}, predicted {_esc(names[j])}: {int(count)}">{int(count)}</td>')
        rows.append(f'<tr><th class="true" scope="row">{_esc(names[i])}</th>{"".join(cells)}'
                    f'<td class="num" data-key="total" data-value="{total}" style="color:#5b6475">{total}</td></tr>')
    column_totals = [sum(int(row[j]) for row in matrix) for j in range(len(matrix[0]))]
    footer = ('<tfoot><tr><th class="sum" scope="row">predicted as it</th>' + "".join(
        f'<td data-key="predicted" data-value="{t}" style="color:#5b6475">{t}</td>' for t in column_totals)
        + "<td></td></tr></tfoot>")
    confusion = ('<div class="scroll"><table class="confusion" id="confusion"><thead><tr>'
                 '<th class="corner">true ↓ · predicted →</th>'
                 f'{heads}<th class="pred">total</th></tr></thead><tbody>{"".join(rows)}</tbody>{footer}</table></div>'
                 '<p class="muted">Test set. Rows: true class; columns: predicted class. Blue: correct, '
                 'red: mistakes; the darker, the larger the share of the row.</p>')
    per_class = []
    for k, name in enumerate(names):
        r = recall[k] if k < len(recall) else None
        p = precision[k] if k < len(precision) else None
        samples = sum(int(c) for c in matrix[k]) if k < len(matrix) else None
        predicted = column_totals[k] if k < len(column_totals) else None
        width = f"{100 * float(r):.1f}" if _finite(r) else "0"
        per_class.append(f'<tr><td data-key="class" data-value="{_esc(name)}">{_esc(name)}</td>'
                         + _td(p, _fixed(p) if p is not None else "never predicted", "precision",
                               extra=f' title="{_esc(predicted)} predicted as {_esc(name)}"')
                         + _td(r, _fixed(r) if r is not None else "no samples", "recall",
                               extra=f' title="{_esc(samples)} test images of {_esc(name)}"')
                         + f'<td class="barcell"><div class="bar" style="width:{width}%"></div></td></tr>')
    per_class_table = ('<table id="per-class"><thead><tr><th>class</th><th class="num">precision</th>'
                       '<th class="num">recall</th><th></th></tr></thead>'
                       f'<tbody>{"".join(per_class)}</tbody></table>'
                       '<p class="muted">Recall of a class (its accuracy): the share of its test images predicted '
                       'as it, the diagonal cell over its row\'s total. Precision: the share of the images '
                       'predicted as it that are of it, the diagonal cell over its column\'s total.</p>')
    return ('<h2 id="classes">Confusion matrix, precision and recall per class</h2>'
            f'<div class="side"><div>{confusion}</div><div>{per_class_table}</div></div>')


def png_data_uri(pixels, width, height):
    """A grayscale PNG (8 bits) of `pixels` (ints 0-255, row by row) as a data: URI."""
    values = bytes(min(255, max(0, int(v))) for v in pixels)
    if len(values) != width * height:
        raise ValueError(f"{len(values)} pixels do not fill {width}x{height}")
    raw = b"".join(b"\x00" + values[r * width:(r + 1) * width] for r in range(height))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _mistakes_section(report):
    mistakes = report.get("mistakes")
    if mistakes is None:
        return ""
    names = _class_names(report)
    if not mistakes:
        return ('<h2 id="mistakes">Most confident mistakes</h2>'
                '<p class="muted" id="mistakes-none">The final model gets no test image wrong.</p>')

    def name(k):
        return names[k] if isinstance(k, int) and 0 <= k < len(names) else str(k)

    items = []
    for m in mistakes:
        pixels = m.get("pixels") or []
        side = math.isqrt(len(pixels))
        picture = (f'<img src="{png_data_uri(pixels, side, side)}" width="{side * 3}" height="{side * 3}" '
                   f'alt="test image {_esc(m.get("index"))}">' if pixels and side * side == len(pixels)
                   else '<div class="muted">no picture</div>')
        confidence = m.get("confidence")
        items.append(
            f'<figure class="mistake" data-index="{_esc(m.get("index"))}" data-true="{_esc(m.get("true"))}" '
            f'data-predicted="{_esc(m.get("predicted"))}" data-confidence="{_esc(_exact(confidence))}">{picture}'
            f'<figcaption><span class="pred">{_esc(name(m.get("predicted")))}</span> '
            f'<span class="conf nw">{_fixed(100 * confidence if _finite(confidence) else None, 1)} %</span><br>'
            f'<span class="muted">true</span> <span class="true">{_esc(name(m.get("true")))}</span><br>'
            f'<span class="muted">test image #{_esc(m.get("index"))}</span></figcaption></figure>')
    return ('<h2 id="mistakes">Most confident mistakes</h2>'
            f'<div class="gallery">{"".join(items)}</div>'
            '<p class="muted">The test images the final model gets wrong with the highest confidence, most '
            'confident first. Under each: the class it predicted (red) and the probability it gave it, the true '
            'class (green) and the image\'s place in the test set.</p>')


def _gradient_section(report):
    check = report.get("gradient_check")
    if not check:
        return '<h2>Gradient check</h2><p class="muted" id="gradient-check">not recorded</p>'
    passed = bool(check.get("passed"))
    badge = (f'<span class="badge {"ok" if passed else "bad"}" id="gradient-passed" '
             f'data-value="{_exact(passed)}">{"passed" if passed else "FAILED"}</span>')
    worst, tolerance = check.get("worst_relative_error"), check.get("tolerance")
    rows = []
    for name, entry in (check.get("parameters") or {}).items():
        rows.append(f'<tr><td data-key="parameter" data-value="{_esc(name)}">{_esc(name)}</td>'
                    + _td(entry.get("relative_error"), _sci(entry.get("relative_error")), "relative_error")
                    + _td(entry.get("entries_checked"), None, "entries_checked")
                    + _td(entry.get("entries_total"), None, "entries_total") + "</tr>")
    return ('<h2>Gradient check</h2>'
            f'<p id="gradient-check">{badge} worst relative error '
            f'<span id="gradient-worst" data-value="{_esc(_exact(worst))}">{_sci(worst)}</span>, tolerance '
            f'<span id="gradient-tolerance" data-value="{_esc(_exact(tolerance))}">{_sci(tolerance)}</span></p>'
            '<table id="gradient-parameters"><thead><tr><th>parameter</th><th class="num">relative error</th>'
            '<th class="num">entries checked</th><th class="num">entries in all</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            '<p class="muted">Backpropagation against the numerical gradient (central differences) '
            'on a sample of each parameter\'s entries.</p>')


def _hyperparameter_section(report):
    params = report.get("hyperparameters") or {}
    rows = "".join(f'<tr><th scope="row">{_esc(key)}</th>'
                   f'<td class="mono" data-key="{_esc(key)}" data-value="{_esc(json.dumps(value))}">'
                   f'{_esc(value)}</td></tr>' for key, value in params.items())
    return f'<h2>Hyperparameters</h2><table id="hyperparameters"><tbody>{rows}</tbody></table>'


def _digest_section(report):
    digests = report.get("digests") or {}
    rows = [f'<tr><th scope="row">data: {_esc(name)}</th><td data-key="{_esc(name)}" data-value="{_esc(value)}">'
            f'<code class="digest">{_esc(value)}</code></td></tr>'
            for name, value in (digests.get("data") or {}).items()]
    if digests.get("model"):
        rows.append(f'<tr><th scope="row">model (final weights)</th><td data-key="model" '
                    f'data-value="{_esc(digests["model"])}">'
                    f'<code class="digest">{_esc(digests["model"])}</code></td></tr>')
    body = "".join(rows) or '<tr><td class="muted">not recorded</td></tr>'
    checkpoints = report.get("checkpoints") or []
    rows = "".join("<tr>" + _td(c.get("file"), f'<code>{_esc(c.get("file"))}</code>', "file", cls="")
                   + _td(c.get("iteration"), None, "iteration")
                   + _td(c.get("epoch"), _epoch_text(c.get("epoch")), "epoch")
                   + _td(c.get("sha256"), f'<code class="digest">{_esc(c.get("sha256"))}</code>', "sha256", cls="")
                   + "</tr>" for c in checkpoints)
    table = ('<table id="checkpoints"><thead><tr><th>file</th><th class="num">iteration</th><th class="num">epoch</th>'
             f'<th>SHA-256</th></tr></thead><tbody>{rows}</tbody></table>' if checkpoints
             else '<p class="muted" id="checkpoints">no checkpoints recorded</p>')
    return (f'<h2>Digests (SHA-256)</h2><table id="digests"><tbody>{body}</tbody></table>'
            f'<h2>Checkpoints</h2>{table}')


def _stage_section(report):
    stages = report.get("stages")
    if not stages:
        return '<h2>Time per stage</h2><p class="muted" id="stages">not recorded</p>'
    longest = max([float(s["seconds"]) for s in stages if _finite(s.get("seconds"))] or [0.0])
    rows = []
    for stage in stages:
        name, state, seconds = stage.get("task"), stage.get("state"), stage.get("seconds")
        ran = state == "ran"
        width = 100 * float(seconds) / longest if _finite(seconds) and longest > 0 else 0
        text = f"{float(seconds):.2f} s" if _finite(seconds) else "—"
        rows.append(f'<tr data-task="{_esc(name)}" data-state="{_esc(state)}"><th scope="row">{_esc(name)}</th>'
                    f'<td data-key="state"><span class="state {"ran" if ran else "cached"}">{_esc(state)}</span></td>'
                    + _td(seconds, text, name, cls="num" if ran else "num muted")
                    + f'<td class="barcell"><div class="bar{"" if ran else " old"}" style="width:{width:.1f}%">'
                    '</div></td>' + _td(stage.get("finished_at"), _time_text(stage.get("finished_at")), "finished_at",
                                        cls="") + "</tr>")
    total = sum(float(s["seconds"]) for s in stages if s.get("state") == "ran" and _finite(s.get("seconds")))
    rows.append('<tr class="final"><th scope="row">this command</th><td></td>'
                + _td(total, f"{total:.2f} s", "total") + "<td></td><td></td></tr>")
    return ('<h2>Time per stage</h2><table id="stages"><thead><tr><th>task</th><th>state</th>'
            '<th class="num">seconds</th><th></th><th>finished (UTC)</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>"
            '<p class="muted">"ran": the task made its output in the command that wrote this report; "cached": '
            'its output was there already, and its seconds (in grey) are those it took when it was made. '
            'The total adds up the stages that ran.</p>')


def _canary_section(report):
    """A dated run's comparison with the previous date's run of the same parameters."""
    found = report.get("canary")
    if not isinstance(found, dict):
        return ""
    status = str(found.get("status", ""))
    return (f'<h2>Reproducibility</h2><p id="canary" data-value="{_esc(status)}" class="'
            f'{"warning" if status == "different-bits" else "meta"}">{_esc(found.get("message", ""))}</p>')


def _environment_section(report):
    environment = report.get("environment")
    if not environment:
        return '<h2>Environment</h2><p class="muted" id="environment">not recorded</p>'
    labels = {"python": "Python", "python_implementation": "implementation", "platform": "platform",
              "numpy": "numpy", "h5py": "h5py", "hdf5": "HDF5", "luigi": "luigi", "mnist-pipeline": "mnist-pipeline"}
    rows = [f'<tr><th scope="row">{_esc(labels.get(key, key))}</th><td class="mono" data-key="{_esc(key)}" '
            f'data-value="{_esc(value)}">{_esc(value)}</td></tr>'
            for key, value in environment.items() if not isinstance(value, dict)]
    blas = environment.get("blas") or {}
    if blas:
        built = f'{blas.get("name", "?")} {blas.get("version", "")}'.strip()
        loaded = (f'; loaded: {blas.get("loaded")} {blas.get("loaded_version", "")}, {blas.get("threads", "?")} '
                  f'thread(s), {blas.get("architecture", "")}' if blas.get("loaded") else "")
        rows.append(f'<tr><th scope="row">BLAS (numpy)</th><td class="mono" data-key="blas" '
                    f'data-value="{_esc(json.dumps(blas, sort_keys=True))}">built with {_esc(built)}{_esc(loaded)}'
                    '</td></tr>')
    return ('<h2>Environment</h2><table id="environment"><tbody>' + "".join(rows) + '</tbody></table>'
            '<p class="muted">Of the process that evaluated the run. The last bits of the weights depend on the '
            'BLAS and its thread count.</p>')


def _nav(links):
    """A line of links to the neighbouring pages: [(element id, text, href)]; relative hrefs."""
    shown = [f'<a id="{_esc(element_id)}" href="{_esc(_safe_href(href))}">{_esc(text)}</a>'
             for element_id, text, href in links if _safe_href(href)]
    return f'<nav class="crumbs">{" · ".join(shown)}</nav>' if shown else ""


def run_page(report: dict, *, index_href="../../../index.html", sweeps=()) -> str:
    """The HTML page of one run's report dict (as report.build_report makes it; missing parts
    show as 'not recorded'). index_href: the runs index, relative to the page (the default fits
    artifacts/<dataset>/<run>/report/index.html); sweeps: [{"sweep_id", "href"}] of the sweeps
    known to hold the run. Self-contained, no script; the mini-batch loss is binned, so the page
    stays small however many iterations ran."""
    run_id = report.get("run_id", "run")
    meta = " · ".join(_esc(part) for part in (
        f"dataset {report.get('dataset', '?')}", f"created {report.get('created_at', '?')}",
        f"mnist-pipeline {report.get('package_version', '?')}"))
    nav = _nav([("link-index", "← all runs", index_href)]
               + [(f"link-sweep-{k}", f"sweep {s.get('sweep_id')}", s.get("href")) for k, s in enumerate(sweeps)])
    body = (f'{nav}<h1 id="run-id" data-value="{_esc(run_id)}">{_esc(run_id)}</h1><p class="meta">{meta}</p>'
            + _epochs_section(report) + _minibatch_section(report) + _confusion_section(report)
            + _mistakes_section(report) + _gradient_section(report) + _hyperparameter_section(report)
            + _stage_section(report) + _canary_section(report) + _environment_section(report)
            + _digest_section(report))
    return _page(f"{run_id} — mnist-pipeline run", body)


# ---------------------------------------------------------------------------------------------
# tables of runs: the index and a sweep

_RUN_COLUMNS = (  # key, header, sort type
    ("run_id", "run", "text"), ("dataset", "dataset", "text"), ("hidden_size", "hidden", "number"),
    ("batch_size", "batch", "number"), ("learning_rate", "learning rate", "number"),
    ("iterations", "iterations", "number"), ("seed", "seed", "number"), ("dtype", "dtype", "text"),
    ("sampling", "sampling", "text"), ("final_train_accuracy", "final train accuracy", "number"),
    ("final_test_accuracy", "final test accuracy", "number"), ("finished_at", "finished (UTC)", "number"))
BEST_COLUMN = "best test accuracy (epoch; chosen on the test set)"
VALIDATION_BEST_COLUMNS = (  # a sweep with a validation split: key, header
    ("best_validation_accuracy", "best validation accuracy (epoch)"),
    ("test_accuracy_at_best_epoch", "test accuracy at that epoch (chosen on validation)"))

_SCRIPT = r"""<script>
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var each = function (list, fn) { Array.prototype.forEach.call(list, fn); };

  // Sort a table by the column whose header is clicked: numbers first high-to-low, text A to Z;
  // clicking again reverses. Empty cells stay last.
  each(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells;
    each(heads, function (th, column) {
      if (!th.hasAttribute("data-type")) return;
      th.addEventListener("click", function () {
        var numeric = th.getAttribute("data-type") === "number";
        var now = th.getAttribute("aria-sort");
        var dir = now === "descending" ? "ascending" : now === "ascending" ? "descending"
                : numeric ? "descending" : "ascending";
        each(heads, function (other) { if (other.hasAttribute("data-type")) other.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", dir);
        var sign = dir === "ascending" ? 1 : -1;
        var body = table.tBodies[0];
        var keyed = Array.prototype.map.call(body.rows, function (row, i) {
          var text = row.cells[column].getAttribute("data-value") || "";
          return { key: numeric ? (text === "" ? NaN : parseFloat(text)) : text, index: i, row: row };
        });
        keyed.sort(function (a, b) {
          if (numeric) {
            var an = isNaN(a.key), bn = isNaN(b.key);
            if (an || bn) return an === bn ? a.index - b.index : (an ? 1 : -1);
            if (a.key !== b.key) return sign * (a.key - b.key);
          } else {
            var c = a.key.localeCompare(b.key, undefined, { numeric: true });
            if (c) return sign * c;
          }
          return a.index - b.index;
        });
        each(keyed, function (entry) { body.appendChild(entry.row); });
      });
    });
  });

  // The comparison: one plot per figure (test accuracy, train-set loss, ...), the selector shows
  // one, and the curves of the runs whose boxes are ticked are drawn on it, cut to the plot box.
  var source = document.getElementById("curves");
  if (!source) return;
  var data = JSON.parse(source.textContent);
  var select = document.getElementById("compare-metric");
  var legend = document.getElementById("compare-legend");
  var hint = document.getElementById("compare-hint");
  function clipSegment(ax, ay, bx, by, box) {  // Liang-Barsky: the part of a-b inside the box, or null
    var t0 = 0, t1 = 1, dx = bx - ax, dy = by - ay;
    var edges = [[-dx, ax - box[0]], [dx, box[2] - ax], [-dy, ay - box[1]], [dy, box[3] - ay]];
    for (var i = 0; i < 4; i++) {
      var p = edges[i][0], q = edges[i][1];
      if (p === 0) { if (q < 0) return null; }
      else if (p < 0) t0 = Math.max(t0, q / p);
      else t1 = Math.min(t1, q / p);
    }
    return t0 > t1 ? null : [ax + t0 * dx, ay + t0 * dy, ax + t1 * dx, ay + t1 * dy];
  }
  function pathData(points, svg) {
    var d = svg.dataset;
    var x0 = +d.xMin, x1 = +d.xMax, y0 = +d.yMin, y1 = +d.yMax;
    var left = +d.left, top = +d.top, width = +d.width, height = +d.height;
    var box = [left, top, left + width, top + height];
    function at(x, y) {
      return Math.min(Math.max(x, box[0]), box[2]).toFixed(1) + " " + Math.min(Math.max(y, box[1]), box[3]).toFixed(1);
    }
    var pixels = points.map(function (p) {
      return [left + (p[0] - x0) / (x1 - x0) * width, top + height - (p[1] - y0) / (y1 - y0) * height];
    });
    if (pixels.length === 1) {
      var x = pixels[0][0], y = pixels[0][1];
      return x >= box[0] && x <= box[2] && y >= box[1] && y <= box[3] ? "M" + at(x, y) + "h0" : "";
    }
    var parts = [], pen = null;
    for (var k = 1; k < pixels.length; k++) {
      var s = clipSegment(pixels[k - 1][0], pixels[k - 1][1], pixels[k][0], pixels[k][1], box);
      if (!s) { pen = null; continue; }
      var start = at(s[0], s[1]), end = at(s[2], s[3]);
      if (start !== pen) parts.push("M" + start);
      parts.push("L" + end);
      pen = end;
    }
    return parts.join("");
  }
  function draw() {
    var metric = select ? select.value : data.metrics[0];
    each(document.querySelectorAll("div.metric-plot"), function (div) {
      div.hidden = div.getAttribute("data-metric") !== metric;
      var group = div.querySelector("g.series");
      while (group.firstChild) group.removeChild(group.firstChild);
    });
    var svg = document.getElementById("compare-plot-" + metric);
    var group = svg.querySelector("g.series");
    var chosen = Array.prototype.filter.call(document.querySelectorAll("input.choose"),
                                             function (box) { return box.checked; });
    chosen.sort(function (a, b) { return a.getAttribute("data-run") - b.getAttribute("data-run"); });
    legend.textContent = "";
    if (chosen.length < 2) {
      hint.textContent = chosen.length ? "Choose one more run to compare."
                                       : "Tick two or more runs in the table to compare them.";
      return;
    }
    hint.textContent = chosen.length + " runs compared: " + data.names[metric] + " per epoch.";
    each(chosen, function (box, k) {
      var run = data.runs[+box.getAttribute("data-run")];
      var curve = run.curves[metric] || [];
      var colour = data.palette[k % data.palette.length];
      var dash = data.dashes[Math.floor(k / data.palette.length) % data.dashes.length];
      var line = document.createElementNS(NS, "path");
      line.setAttribute("class", "line");
      line.setAttribute("data-run", run.id);
      line.setAttribute("d", pathData(curve, svg));
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", colour);
      line.setAttribute("stroke-width", "2");
      line.setAttribute("stroke-linejoin", "round");
      line.setAttribute("stroke-linecap", "round");
      if (dash) line.setAttribute("stroke-dasharray", dash);
      group.appendChild(line);
      var item = document.createElement("li");
      var swatch = document.createElementNS(NS, "svg");
      swatch.setAttribute("class", "swatch");
      swatch.setAttribute("viewBox", "0 0 24 6");
      var sample = document.createElementNS(NS, "line");
      [["x1", 0], ["x2", 24], ["y1", 3], ["y2", 3], ["stroke", colour], ["stroke-width", 2.5]].forEach(function (a) {
        sample.setAttribute(a[0], a[1]);
      });
      if (dash) sample.setAttribute("stroke-dasharray", dash);
      swatch.appendChild(sample);
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(run.id + (curve.length ? "" : " (no " + data.names[metric] + ")")));
      legend.appendChild(item);
    });
  }
  each(document.querySelectorAll("input.choose"), function (box) { box.addEventListener("change", draw); });
  if (select) select.addEventListener("change", draw);
  window.addEventListener("pageshow", draw);
  draw();
})();
</script>
"""


def _time_text(text):
    moment = _timestamp(text)
    if moment is None:
        return _esc(text if text else "—")
    utc = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
    return (f'<span title="{_esc(text)}"><span class="nw">{utc:%Y-%m-%d}</span> '
            f'<span class="nw">{utc:%H:%M}</span></span>')


def _safe_href(href):
    href = str(href or "")
    return "" if href.strip().lower().startswith(("javascript:", "data:", "vbscript:")) else href


def _best(curve):
    """(test accuracy, epoch) of the curve's highest point (the earliest of equals), or (None, None)."""
    points = [(float(a), float(e)) for e, a in (curve or []) if _finite(a) and _finite(e)]
    if not points:
        return None, None
    accuracy = max(a for a, _ in points)
    return accuracy, next(e for a, e in points if a == accuracy)


def _run_cell(key, row):
    value = row.get(key)
    if key == "run_id":
        href = _safe_href(row.get("href"))
        text = f'<a href="{_esc(href)}">{_esc(value)}</a>' if href else _esc(value)
        return _td(value, text, key, cls="mono")
    if key == "finished_at":
        return _td(_timestamp(value), _time_text(value), key, extra=f' data-text="{_esc(value)}"')
    if key in ("final_train_accuracy", "final_test_accuracy"):
        return _td(value, _fixed(value), key)
    if key == "learning_rate":
        return _td(value, _esc(f"{float(value):g}") if _is_number(value) else "—", key)
    return _td(value, None, key, cls="num" if _is_number(value) else "")


def _runs_table(runs, *, choose=False, best=False, rank=False):
    heads = []
    if rank:
        heads.append('<th class="num">#</th>')
    if choose:
        heads.append('<th title="tick to compare">compare</th>')
    columns = list(_RUN_COLUMNS)
    for key, header, kind in columns:
        cls = ' class="num"' if kind == "number" and key != "run_id" else ""
        heads.append(f'<th{cls} data-key="{key}" data-type="{kind}" aria-sort="none" scope="col">'
                     f'<button type="button">{_esc(header)}</button></th>')
        if best and key == "final_test_accuracy":
            for best_key, header in (VALIDATION_BEST_COLUMNS if best == "validation" else
                                     (("best_test_accuracy", BEST_COLUMN),)):
                heads.append(f'<th class="num" data-key="{best_key}" data-type="number" aria-sort="none" '
                             f'scope="col"><button type="button">{_esc(header)}</button></th>')
    rows = []
    for index, (position, row) in enumerate(runs):
        cells = []
        if rank:
            cells.append(_td(index + 1, None, "rank"))
        if choose:
            cells.append(f'<td><input type="checkbox" class="choose" data-run="{position}" '
                         f'aria-label="compare {_esc(row.get("run_id"))}"></td>')
        for key, _, _ in columns:
            cells.append(_run_cell(key, row))
            if best == "validation" and key == "final_test_accuracy":
                accuracy, epoch = row.get("best_validation_accuracy"), row.get("best_epoch")
                text = f"{_fixed(accuracy)} ({_epoch_text(epoch)})" if _is_number(accuracy) else "—"
                cells.append(_td(accuracy, text, "best_validation_accuracy", extra=f' data-epoch="{_esc(_exact(epoch))}"'))
                cells.append(_td(row.get("test_accuracy_at_best_epoch"), _fixed(row.get("test_accuracy_at_best_epoch")),
                                 "test_accuracy_at_best_epoch"))
            elif best and key == "final_test_accuracy":
                accuracy, epoch = _best(row.get("curve"))
                text = f"{_fixed(accuracy)} ({_epoch_text(epoch)})" if accuracy is not None else "—"
                cells.append(_td(accuracy, text, "best_test_accuracy", extra=f' data-epoch="{_esc(_exact(epoch))}"'))
        rows.append(f'<tr data-run="{position}">{"".join(cells)}</tr>')
    return ('<div class="scroll"><table class="sortable runs" id="runs"><thead><tr>' + "".join(heads)
            + f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _metric_range(curves, kind="accuracy"):
    """The y range of curves of one figure: fitted to the points after epoch 0 (the untrained
    start would squeeze the differences that matter), and whether a point lies outside it."""
    trained = [a for curve in curves for e, a in curve if e > 0]
    everything = [a for curve in curves for _, a in curve]
    low, high = _fit_range(trained or everything, (0.0, 1.0) if kind == "accuracy" else (0.0, math.inf))
    return (low, high), any(a < low or a > high for a in everything)


def _accuracy_range(curves):
    return _metric_range(curves, "accuracy")


def _outside_note(outside, metric="test_accuracy"):
    return (f'<p class="muted">The y axis fits the {_esc(METRICS.get(metric, metric))} after training began; '
            'the untrained start (epoch 0) lies outside it, so its line enters from the edge.</p>' if outside else "")


def _below_note(below):
    return _outside_note(below)


def _points(curve):
    return [[float(e), float(a)] for e, a in (curve or []) if _finite(e) and _finite(a)]


def _curve(row):
    return _points(row.get("curve"))


def curves_of(epochs):
    """{figure: [[epoch, value], ...]} of a report's epoch rows, for each figure of METRICS they carry."""
    return {key: [[row["epoch"], row[key]] for row in epochs if _finite(row.get(key)) and _finite(row.get("epoch"))]
            for key in METRICS if any(_finite(row.get(key)) for row in epochs)}


def _curves(row):
    """A row's curves by figure: its `curves`, or its `curve` as the test accuracy."""
    curves = {key: _points(points) for key, points in (row.get("curves") or {}).items() if key in METRICS}
    if "test_accuracy" not in curves and row.get("curve"):
        curves["test_accuracy"] = _curve(row)
    return {key: points for key, points in curves.items() if points}


def _sweeps_table(sweeps, runs):
    """The sweeps: id (linked), dataset, runs, best run (linked to its page when listed) and its accuracy."""
    hrefs = {str(row.get("run_id")): _safe_href(row.get("href")) for row in runs}
    rows = []
    for sweep in sweeps:
        href, best = _safe_href(sweep.get("href")), str(sweep.get("best_run_id") or "")
        name = _esc(sweep.get("sweep_id"))
        best_href = _safe_href(sweep.get("best_href")) or hrefs.get(best, "")
        if best and best not in hrefs:  # removed since (gc): the sweep's own page still names it
            best, best_text = "", '<span class="muted">no longer in the index</span>'
        else:
            best_text = f'<a href="{_esc(best_href)}">{_esc(best)}</a>' if best_href else (_esc(best) or "—")
        rows.append('<tr>' + _td(sweep.get("sweep_id"), f'<a href="{_esc(href)}">{name}</a>' if href else name,
                                 "sweep_id", cls="mono")
                    + _td(sweep.get("dataset"), None, "dataset", cls="")
                    + _td(sweep.get("run_count"), None, "run_count")
                    + _td(best, best_text, "best_run_id", cls="mono")
                    + _td(sweep.get("best_test_accuracy"), _fixed(sweep.get("best_test_accuracy"))
                          + (" (at its best validation epoch)" if sweep.get("chosen_on") == "validation" else ""),
                          "best_test_accuracy")
                    + _td(_timestamp(sweep.get("finished_at")), _time_text(sweep.get("finished_at")), "finished_at")
                    + '</tr>')
    return ('<div class="scroll"><table class="runs" id="sweeps"><thead><tr><th>sweep</th><th>dataset</th>'
            '<th class="num">runs</th><th>best run (by validation accuracy where the sweep has a split, else '
            'by final test accuracy)</th><th class="num">its test accuracy</th><th class="num">finished (UTC)</th>'
            '</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def index_page(runs: list, sweeps=()) -> str:
    """The page listing every run and every sweep.

    runs: one dict per run (run_id, dataset, hidden_size, batch_size, learning_rate, iterations,
    seed, dtype, sampling, final_train_accuracy, final_test_accuracy, finished_at, href: the
    run's page, relative; curves: {figure: [[epoch, value], ...]} for figures of METRICS, as
    curves_of(report["epochs"]) gives them; or curve: [[epoch, test_accuracy], ...]).
    sweeps: [{sweep_id, dataset, run_count, best_run_id, best_test_accuracy, finished_at, href:
    the sweep's page, relative}]. Clicking a column's header sorts by it; ticking two or more
    runs draws their curves of the figure chosen in a selector (a small script, curves embedded
    as JSON), cut to the plot box."""
    runs, sweeps = list(runs), list(sweeps)
    curves = [_curves(row) for row in runs]
    metrics = [key for key in METRICS if any(key in c for c in curves)] or ["test_accuracy"]
    epochs = [e for c in curves for points in c.values() for e, _ in points]
    x_range = (min(epochs + [0.0]), max(epochs)) if epochs else (0.0, 1.0)
    plots, options = [], []
    for metric in metrics:
        kind = "accuracy" if metric.endswith("accuracy") else "loss"
        y_range, outside = _metric_range([c.get(metric, []) for c in curves], kind)
        plot = line_plot([], title=f"{METRICS[metric][0].upper()}{METRICS[metric][1:]} of the chosen runs",
                         x_label="epoch", y_label=METRICS[metric], plot_id=f"compare-plot-{metric}", x_range=x_range,
                         y_range=y_range, width=900, height=340)
        plot = plot.replace('<text class="empty"', '<text class="empty" visibility="hidden"')
        hidden = "" if metric == metrics[0] else " hidden"
        plots.append(f'<div class="metric-plot" data-metric="{metric}"{hidden}>{plot}'
                     f'{_outside_note(outside, metric)}</div>')
        options.append(f'<option value="{metric}">{_esc(METRICS[metric])}</option>')
    data = {"runs": [{"id": str(row.get("run_id")), "curves": c} for row, c in zip(runs, curves)],
            "metrics": metrics, "names": {m: METRICS[m] for m in metrics},
            "palette": list(PALETTE), "dashes": list(DASHES)}
    sweeps_section = ('<h2 id="sweeps-heading">Sweeps</h2>'
                      f'<p class="meta" id="sweep-count" data-value="{len(sweeps)}">{len(sweeps)} '
                      f'sweep{"s" if len(sweeps) != 1 else ""}.</p>' + (_sweeps_table(sweeps, runs) if sweeps else ""))
    body = ('<h1>mnist-pipeline runs</h1>'
            f'<p class="meta" id="run-count" data-value="{len(runs)}">{len(runs)} run{"s" if len(runs) != 1 else ""}'
            + (f' and <a href="#sweeps-heading">{len(sweeps)} sweep{"s" if len(sweeps) != 1 else ""}</a>' if sweeps
               else "")
            + '. Click a column\'s header to sort by it; tick runs to compare them below.</p>'
            + _runs_table(list(enumerate(runs)), choose=True,
                          best="validation" if any(_finite(r.get("best_validation_accuracy")) for r in runs) else False)
            + '<h2>Compare runs</h2><p><label>Figure: <select id="compare-metric">' + "".join(options)
            + '</select></label> <span class="muted" id="compare-hint"></span></p>'
            + "".join(plots) + '<ul class="legend" id="compare-legend"></ul>'
            + sweeps_section + _json_script("curves", data))
    return _page("mnist-pipeline runs", body, _SCRIPT)


def _validated(runs):
    return bool(runs) and all(_finite(row.get("best_validation_accuracy")) for row in runs)


def _sweep_series(runs):
    """(runs ranked as (index, row): by best validation accuracy when every row has one, in the
    order given among equals, else best final test accuracy first; their curves, the fitted
    y range, whether it leaves points below it)."""
    key = "best_validation_accuracy" if _validated(runs) else "final_test_accuracy"

    def order(item):
        value = item[1].get(key)
        return (0, -float(value)) if _finite(value) else (1, 0.0)

    ranked = sorted(enumerate(runs), key=order)
    series = [{"label": str(row.get("run_id")), "points": [tuple(p) for p in _curve(row)]} for _, row in ranked]
    return (ranked, series, *_accuracy_range([s["points"] for s in series]))


def sweep_plot(runs: list, standalone=False) -> str:
    """The test-accuracy curves of a sweep's runs (rows as for index_page) on one plot, the y axis
    fitted to the data."""
    _, series, y_range, _ = _sweep_series(runs)
    return line_plot(series, title="Test accuracy per epoch, every run of the sweep", x_label="epoch",
                     y_label="test accuracy", plot_id="sweep-plot", y_range=y_range, width=1000, height=380,
                     markers=False, standalone=standalone)


def sweep_page(sweep_id: str, runs: list, *, index_href="../../../index.html") -> str:
    """The page of one sweep: its runs (rows as for index_page, finished_at filled), all
    test-accuracy curves on one plot whose y axis fits the data, and the runs' ranking. Rows of a
    sweep with a validation split (best_validation_accuracy, best_epoch,
    test_accuracy_at_best_epoch, as pipeline.sweep gives them) are ranked by best validation
    accuracy and show the test accuracy of that epoch; otherwise best final test accuracy first,
    with each run's best test accuracy and its epoch, labelled as chosen on the test set.
    index_href: the runs index, relative to the page (the default fits
    artifacts/<dataset>/sweeps/<sweep id>/index.html)."""
    ranked, _, _, below = _sweep_series(runs)
    plot = sweep_plot(runs)
    validated = _validated(runs)
    order = "ranked by best validation accuracy" if validated else "best final test accuracy first"
    note = ('<p class="note">Each run\'s epoch is the one of its best accuracy on training images held out of '
            'training (the same ones for every run); the test accuracy shown is that epoch\'s, read for reporting '
            'only: the test set chose neither the run nor the epoch.</p>' if validated else
            '<p class="note">There is no validation split: the "best test accuracy" column picks the epoch '
            'by looking at the test set itself, so it overstates how that model would do on new data. '
            'The final test accuracy, of the model training ended with, was not chosen that way. '
            'Sweep with <code>--validation-size</code> to choose on held-out training images instead.</p>')
    body = (_nav([("link-index", "← all runs", index_href)])
            + f'<h1 id="sweep-id" data-value="{_esc(sweep_id)}">{_esc(sweep_id)}</h1>'
            f'<p class="meta" id="run-count" data-value="{len(ranked)}">{len(ranked)} runs, '
            f'{order}. Click a column\'s header to sort by it.</p>'
            + _runs_table(ranked, best="validation" if validated else True, rank=True) + note
            + f'<h2>Test accuracy per epoch</h2>{plot}{_below_note(below)}')
    return _page(f"{sweep_id} — mnist-pipeline sweep", body, _SCRIPT)
