"""The report's interactive page: each metric against each x-axis, drawn by plotly.js, offline.

`write_page` writes `index.html`, with the data embedded as JSON, and plotly.js beside it. The page's own
script only wires the controls (metrics, x-axis, log y, smoothing, seed lines, the shared legend, table
sorting) and keeps their state in the URL hash, so that a link opens the same view.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np
import plotly.offline

from benchmark.report.aggregate import Curve
from benchmark.report.figures import thinned

PLOTLY_JS = "plotly.min.js"
PAGE_JS = "page.js"  # package data beside this module
# A panel is at most ~700 pixels wide at two per row: more points only cost page size and drawing time.
_MAX_DRAWN = 1000
# plotly's default colours, which are matplotlib's C0..C9: a variant has the same colour here and in the PNGs.
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]  # fmt: skip
# Digits kept of each drawn number: finer than any panel shows, and the JSON is 40% smaller than with all 17.
_DIGITS = 7


@dataclass
class Trace:
    """One variant's curve of one metric against one x-axis: mean over seeds, its band, seeds present per x,
    and each seed's own line."""

    x: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]
    n: list[int]
    per_seed: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # seed label -> (x, y)


@dataclass(kw_only=True)
class PageData:
    """Everything the page shows, computed by the report; the page only draws and arranges it."""

    title: str  # the study's title, the page's <title> and <h1>
    finding: str  # one line under the title; may be ""
    verdicts: list[str]  # one line each, markdown **bold** allowed, shown at the top
    metrics: list[str]  # panel order
    x_axes: list[str]  # the first is the default
    variants: list[str]  # display order; a variant keeps its colour in every panel
    traces: dict[str, dict[str, dict[str, Trace]]]  # metric -> x-axis -> variant -> Trace (any level may lack keys)
    band: str  # what the band is, e.g. "std over seeds"
    ncols: int = 2  # panels per row (openrlbenchmark's --pc.ncols)
    ncols_legend: int = 1  # columns of the shared legend (--pc.ncols-legend)
    table_headers: list[str]
    table_rows: list[list[str]]  # the summary table as displayed
    table_sort_values: list[list[float | str | None]]  # per cell: what sorting by its column uses
    provenance: list[tuple[str, str]]  # (label, text): commands, config differences, commit, machine, versions...
    samples: dict[str, list[tuple[str, str, float]]]  # variant -> a few (query, response, reward)
    images: list[tuple[str, str]]  # (file name beside the page, caption)
    warnings: list[str]
    footnote: str  # under the table


def write_page(folder: Path, page: PageData) -> list[Path]:
    """Write `folder`/index.html and plotly.js beside it; returns both paths."""
    _check(page)
    folder.mkdir(parents=True, exist_ok=True)
    # plotly.js (4.8 MB) and the page's own script, the same for every report: left alone when unchanged, so
    # a rerun does not touch them.
    scripts = [folder / PLOTLY_JS, folder / PAGE_JS]
    for path, code in zip(scripts, (plotly.offline.get_plotlyjs().encode(), _page_js()), strict=True):
        if not path.exists() or path.read_bytes() != code:
            path.write_bytes(code)
    index = folder / "index.html"
    index.write_text(_html(page), encoding="utf-8")
    return [index, *scripts]


def _page_js() -> bytes:
    return resources.files("benchmark.report").joinpath(PAGE_JS).read_bytes()


def page_data_json(page: PageData) -> str:
    """What the page's script reads: the thinned traces, the colours and the table's sort keys, as JSON that
    is safe inside a <script> element (no `<` at all, so neither `</script>` nor `<!--` can occur)."""
    traces = {
        metric: {
            axis: {variant: _trace_json(t) for variant, t in by_variant.items() if variant in page.variants}
            for axis, by_variant in by_axis.items() if axis in page.x_axes
        }
        for metric, by_axis in page.traces.items() if metric in page.metrics
    }  # fmt: skip
    sort = [[None if isinstance(v, float) and not math.isfinite(v) else v for v in row]
            for row in page.table_sort_values]  # fmt: skip
    data = {"metrics": page.metrics, "x_axes": page.x_axes, "variants": page.variants, "colours": _COLOURS,
            "traces": traces, "sort": sort}  # fmt: skip
    return json.dumps(data, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")


def _check(page: PageData) -> None:
    if not page.x_axes:
        raise ValueError("the page needs at least one x-axis")
    if len(page.table_sort_values) != len(page.table_rows) or any(
        len(keys) != len(row) for keys, row in zip(page.table_sort_values, page.table_rows, strict=True)
    ):
        raise ValueError("table_sort_values must have one value per cell of table_rows")
    for name, _ in page.images:
        path = PurePosixPath(name)
        # Anything else could leave the page's folder, and the page promises to need nothing outside it.
        if path.is_absolute() or ".." in path.parts or ":" in name:
            raise ValueError(f"image {name!r}: give a path inside the page's folder")


def _trace_json(t: Trace) -> dict[str, object]:
    arrays = [np.asarray(a, dtype=float) for a in (t.x, t.mean, t.low, t.high, t.n)]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError("a Trace's x, mean, low, high and n must have the same length")
    c = thinned(Curve(*arrays), _MAX_DRAWN)
    seeds = {}
    for label, (x, y) in t.per_seed.items():
        y = np.asarray(y, dtype=float)
        # A seed's line is thinned as a curve whose band and count are the line itself (only x and mean are kept).
        s = thinned(Curve(np.asarray(x, dtype=float), y, y, y, y), _MAX_DRAWN)
        seeds[label] = [_numbers(s.x), _numbers(s.mean)]
    # n: seeds present, a mean over the bin once thinned; two decimals say enough.
    return {"x": _numbers(c.x), "mean": _numbers(c.mean), "low": _numbers(c.low), "high": _numbers(c.high),
            "n": _numbers(c.n.round(2)), "seeds": seeds}  # fmt: skip


def _numbers(values: np.ndarray) -> list[float | int | None]:
    """JSON has no NaN: a missing point is null, which plotly draws as a gap. Whole numbers (steps, seed
    counts) go without their ".0": a tenth of the JSON. Each number is `float(f"{v:.7g}")`, computed for whole
    arrays (a page of 400 runs holds millions of numbers; see `_rounded`)."""
    v = np.asarray(values, dtype=float)
    kept = _rounded(v)
    finite = np.isfinite(kept)
    whole = finite & (kept == np.floor(kept)) & (np.abs(kept) < 2**53)
    out = kept.astype(object)
    out[whole] = kept[whole].astype(np.int64).tolist()
    out[~finite] = None
    return out.tolist()


# 10**k, exactly, for the k whose power of ten a double holds exactly.
_POWERS = np.array([float(10**k) for k in range(23)])


def _rounded(v: np.ndarray) -> np.ndarray:
    """`float(f"{x:.7g}")` of each x (_DIGITS significant digits, correctly rounded), without formatting each.

    With e the decimal exponent of x, m = rint(x * 10**(6 - e)) is the 7-digit mantissa, and m / 10**(6 - e) is
    then the double nearest to the decimal m x 10**(e - 6), as float() parses it: IEEE division (or product) of
    two exact doubles is correctly rounded. Only the scaling is inexact (an ulp of a number below 10**7), so
    where it leaves m in doubt (x * 10**(6 - e) about half-way between integers or not quite 7 digits long, or
    10**|6 - e| not exact: x beyond about 10**+-16) the number is formatted after all."""
    out = v.copy()  # zeros, infinities and NaN stay as they are (-0.0 formats as "-0", and that parses to -0.0)
    nonzero = np.isfinite(v) & (v != 0)
    with np.errstate(all="ignore"):  # the entries left out (zeros, NaN, inf) may overflow or be NaN here
        shift = np.where(nonzero, (_DIGITS - 1) - np.floor(np.log10(np.abs(v))), 0).astype(np.int64)
        usable = nonzero & (np.abs(shift) < len(_POWERS))
        power = _POWERS[np.minimum(np.abs(shift), len(_POWERS) - 1)]
        up = shift >= 0
        scaled = np.where(up, v * power, v / power)
        mantissa = np.rint(scaled)
        size = np.abs(scaled)
        doubt = (np.abs(size - np.trunc(size) - 0.5) < 1e-4) | (size < 10 ** (_DIGITS - 1) + 1) | (
            size >= 10**_DIGITS - 1
        )
        fast = usable & ~doubt
        out[fast] = np.where(up, mantissa / power, mantissa * power)[fast]
    for i in np.flatnonzero(nonzero & ~fast):
        out[i] = float(f"{v[i]:.{_DIGITS}g}")
    return out


def _inline_markdown(line: str) -> str:
    """A line with markdown's **bold** and `code`, as HTML; everything else escaped."""
    bold = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(line))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", bold)


def _html(page: PageData) -> str:
    esc = html.escape
    # Scripts only from files beside the page, none inline: were some user text ever to slip through unescaped
    # as a <script>, the browser would not run it. Nothing is fetched but files beside the page.
    csp = ("default-src 'none'; script-src 'self' file:; style-src 'unsafe-inline'; "
           "img-src 'self' file: data: blob:; base-uri 'none'; form-action 'none'")
    colour = {v: _COLOURS[i % len(_COLOURS)] for i, v in enumerate(page.variants)}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Else the browser asks the server for /favicon.ico, outside the page's folder.
        '<link rel="icon" href="data:,">',
        f"<title>{esc(page.title)}</title><style>{_STYLE}</style>",
        f'<script src="{PLOTLY_JS}"></script></head><body>',
        f"<h1>{esc(page.title)}</h1>",
    ]
    if page.finding:
        parts.append(f'<p class="finding">{esc(page.finding)}</p>')
    if page.verdicts:
        items = "".join(f"<li>{_inline_markdown(v)}</li>" for v in page.verdicts)
        parts.append(f'<ul class="verdicts">{items}</ul>')
    parts += [_controls(page), _legend(page, colour),
              f'<div id="panels" style="grid-template-columns:repeat({page.ncols},minmax(0,1fr))"></div>',
              "<noscript>The plots need JavaScript; the table below does not.</noscript>"]  # fmt: skip
    if page.images:
        parts.append("<h2>Figures</h2>" + "".join(
            f'<figure><img src="{esc(name)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'
            for name, caption in page.images
        ))  # fmt: skip
    parts.append(_table(page))
    if page.footnote:
        parts.append(f'<p class="footnote">{esc(page.footnote)}</p>')
    if page.samples:
        parts.append("<h2>Sample generations</h2>")
        for variant, rows in page.samples.items():
            swatch = f'<span class="swatch" style="background:{colour[variant]}"></span>' if variant in colour else ""
            body = "".join(f"<tr><td>{esc(q)}</td><td>{esc(r)}</td><td>{reward:.4g}</td></tr>" for q, r, reward in rows)
            parts.append(f"<h3>{swatch}{esc(variant)}</h3><table class=\"samples\"><thead><tr><th>query</th>"
                         f"<th>response</th><th>reward</th></tr></thead><tbody>{body}</tbody></table>")  # fmt: skip
    if page.provenance:
        items = "".join(f"<dt>{esc(label)}</dt><dd>{esc(text)}</dd>" for label, text in page.provenance)
        parts.append(f'<h2>Provenance</h2><dl class="provenance">{items}</dl>')
    if page.warnings:
        parts.append('<h2>Warnings</h2><ul class="warnings">' + "".join(f"<li>{esc(w)}</li>" for w in page.warnings)
                     + "</ul>")  # fmt: skip
    parts += [f'<script type="application/json" id="page-data">{page_data_json(page)}</script>',
              f'<script src="{PAGE_JS}"></script></body></html>\n']  # fmt: skip
    return "\n".join(parts)


def _controls(page: PageData) -> str:
    esc = html.escape
    metrics = "".join(
        f'<label><input type="checkbox" name="metric" value="{esc(m)}" checked> {esc(m)}</label>' for m in page.metrics
    )
    axes = "".join(f'<option value="{esc(a)}">{esc(a)}</option>' for a in page.x_axes)
    return (
        f'<div id="controls"><fieldset><legend>Metrics</legend>{metrics}</fieldset><fieldset><legend>View</legend>'
        f'<label>x-axis <select id="x-axis">{axes}</select></label>'
        '<label><input type="checkbox" id="log-y"> log-scale y</label>'
        '<label>smoothing <input type="number" id="smooth" min="1" max="1000" step="1" value="1"> points</label>'
        '<label><input type="checkbox" id="seeds"> each seed\'s line</label>'
        '<a id="permalink" href="#">link to this view</a></fieldset></div>'
    )


def _legend(page: PageData, colour: dict[str, str]) -> str:
    esc = html.escape
    entries = "".join(
        f'<button type="button" data-variant="{esc(v)}" aria-pressed="true">'
        f'<span class="swatch" style="background:{colour[v]}"></span>{esc(v)}</button>'
        for v in page.variants
    )
    return (
        f'<div id="legend" style="grid-template-columns:repeat({page.ncols_legend},max-content)">{entries}</div>'
        f'<p class="band">Line: mean over seeds; band: {esc(page.band)}. '
        "Click a variant to hide or show it in every panel.</p>"
    )


def _table(page: PageData) -> str:
    esc = html.escape
    head = "".join(f'<th><button type="button">{esc(h)}</button></th>' for h in page.table_headers)
    body = "".join(
        f'<tr data-row="{i}">' + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>"
        for i, row in enumerate(page.table_rows)
    )
    return f'<h2>Summary</h2><table id="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;background:#fff;color:#222}"
    "#controls{display:flex;flex-wrap:wrap;gap:.5em}fieldset{border:1px solid #ccc}"
    "fieldset label{margin-right:1em;white-space:nowrap}"
    "#legend{display:grid;gap:.2em 1.2em;margin:.8em 0 .2em}"
    "#legend button{border:0;background:none;text-align:left;cursor:pointer;font:inherit;padding:2px}"
    "#legend button[aria-pressed=false]{opacity:.4;text-decoration:line-through}"
    ".swatch{display:inline-block;width:1.6em;height:.5em;margin-right:.4em;vertical-align:middle}"
    ".band{font-size:small;color:#555;margin-top:0}"
    "#panels{display:grid;gap:.5em}#panels>div{height:340px;min-width:0}"
    "figure{margin:1em 0}img{max-width:100%}"
    "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;"
    "vertical-align:top}th{background:#eef}th button{border:0;background:none;font:inherit;font-weight:bold;"
    "cursor:pointer;padding:0}th[aria-sort=ascending] button::after{content:' \\25B2'}"
    "th[aria-sort=descending] button::after{content:' \\25BC'}"
    ".samples td{white-space:pre-wrap;max-width:40em}.provenance dd{white-space:pre-wrap;font-family:monospace;"
    "margin:0 0 .6em 1.5em}.footnote{font-size:small;color:#555}"
)

