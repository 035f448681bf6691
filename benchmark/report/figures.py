"""One figure per comparison: a panel per metric, a line per variant with its band over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from benchmark.report.aggregate import Curve

_AXIS_NAMES = {"_step": "step", "_runtime": "wall time (s)", "_timestamp": "time (unix s)"}
_PANEL_SIZE = (5.0, 3.6)  # inches per metric panel
_MARGINS = (0.7, 0.2, 0.55, 0.65)  # left, right, bottom, top in inches: tick labels, axis label, titles
# A panel is ~600 pixels wide: more points per line than this cost drawing time and file size only.
_MAX_DRAWN = 1500


def plot(curves: dict[str, dict[str, Curve]], x_axis: str, title: str, stem: Path, band_name: str) -> list[Path]:
    """Draw `curves[metric][variant]` and write `stem`.png and `stem`.svg, and the numbers drawn
    (every point, before thinning) to `stem`.csv; returns the three paths.

    A `Figure` is built directly rather than through pyplot, so no global figure state or GUI
    backend is involved and nothing needs closing.
    """
    metrics = list(curves)
    width, height = _PANEL_SIZE[0] * len(metrics), _PANEL_SIZE[1]
    figure = Figure(figsize=(width, height))
    # Fixed margins (inches) rather than a layout engine: those measure every label by drawing the
    # figure once more, a third of the drawing time, for margins that are the same every time.
    left, right, bottom, top = _MARGINS
    figure.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height, wspace=0.25
    )
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    variants = list(dict.fromkeys(v for per_variant in curves.values() for v in per_variant))
    # A variant keeps its colour in every panel, even where it lacks a metric.
    colours = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    for ax, metric in zip(axes, metrics, strict=True):
        for variant, full in curves[metric].items():
            c = thinned(full)
            ax.plot(c.x, c.mean, color=colours[variant], linewidth=1.2, label=f"{variant} (n={int(full.n.max())})")
            if not np.isnan(c.low).all():
                ax.fill_between(c.x, c.low, c.high, color=colours[variant], alpha=0.2, linewidth=0)
        ax.set_title(metric)
        ax.set_xlabel(_AXIS_NAMES.get(x_axis, x_axis))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", title=f"mean, band: {band_name}", title_fontsize="small")
    figure.suptitle(title)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, dpi=120)
    _table(curves, x_axis).to_csv(stem.with_suffix(".csv"), index=False)
    return [*paths, stem.with_suffix(".csv")]


def _table(curves: dict[str, dict[str, Curve]], x_axis: str) -> pd.DataFrame:
    """One row per metric, variant and x: the seeds' mean, the band and how many seeds are in it."""
    parts = [
        pd.DataFrame({"metric": metric, "variant": variant, x_axis: c.x, "mean": c.mean, "low": c.low,
                      "high": c.high, "seeds": c.n})
        for metric, per_variant in curves.items()
        for variant, c in per_variant.items()
    ]
    return pd.concat(parts, ignore_index=True)


def thinned(c: Curve, most: int = _MAX_DRAWN) -> Curve:
    """At most `most` points per line, each the mean of a bin of neighbours, so that no logged
    point is skipped (unlike sampling) and a gap stays a gap. Only drawing sees this; the summary
    is computed from every point."""
    size = -(-len(c.x) // most)  # points per bin, rounded up
    if size <= 1:
        return c

    def binned(values: np.ndarray) -> np.ndarray:
        padded = np.concatenate([values.astype(float), np.full(-len(values) % size, np.nan)]).reshape(-1, size)
        present = ~np.isnan(padded)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(present, padded, 0.0).sum(axis=1) / present.sum(axis=1)

    return Curve(binned(c.x), binned(c.mean), binned(c.low), binned(c.high), binned(c.n))


def plot_comparison(
    curves: dict[str, dict[str, Curve]], finals: dict[str, dict[str, np.ndarray]], titles: dict[str, str],
    x_axis: str, stem: Path,
) -> list[Path]:
    """`benchmark compare`'s figure: per metric, both sides' curves (mean, band of one std over seeds) and,
    beside them, each side's final scores, one dot per run with its mean; `stem`.png and `stem`.svg."""
    metrics = list(curves)
    width, height = _PANEL_SIZE[0] * 1.4, _PANEL_SIZE[1] * len(metrics)
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.55 / height, top=1 - 0.45 / height, hspace=0.5)
    axes = figure.subplots(len(metrics), 2, squeeze=False, gridspec_kw={"width_ratios": [3, 1]})
    for (curve_ax, final_ax), metric in zip(axes, metrics, strict=True):
        for i, (side, c) in enumerate(curves[metric].items()):
            c = thinned(c)
            curve_ax.plot(c.x, c.mean, color=f"C{i}", linewidth=1.2, label=side)
            if not np.isnan(c.low).all():
                curve_ax.fill_between(c.x, c.low, c.high, color=f"C{i}", alpha=0.2, linewidth=0)
            scores = finals[metric][side]
            jitter = np.linspace(-0.12, 0.12, len(scores)) if len(scores) > 1 else np.zeros(1)
            final_ax.scatter(i + jitter, scores, color=f"C{i}", s=14)
            final_ax.hlines(scores.mean(), i - 0.25, i + 0.25, color=f"C{i}", linewidth=2)
        curve_ax.set_title(titles[metric])
        curve_ax.set_xlabel(_AXIS_NAMES.get(x_axis, x_axis))
        curve_ax.grid(alpha=0.3)
        final_ax.set_xticks(range(len(curves[metric])), ["baseline", "candidate"][: len(curves[metric])],
                            fontsize="small")
        final_ax.set_xlim(-0.6, len(curves[metric]) - 0.4)
        final_ax.set_title("final scores", fontsize="small")
        final_ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize="small")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, dpi=120)
    return paths
