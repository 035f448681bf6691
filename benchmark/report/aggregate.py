"""Seeds -> one curve per variant, and the numbers of the summary table.

Every run's full history is used: nothing is sampled (openrlbenchmark's 1,500 random points made
its tables wrong), and runs are aligned on the union of their x values rather than resampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.report.runs import Run

Band = Literal["std", "ci95", "iqr"]

# Wall-clock spacing jitters; a gap up to this many logging intervals is still "one interval".
_GAP_TOLERANCE = 1.5
_BOOTSTRAP_RESAMPLES = 1000
# Bootstrap resamples of a long curve are done in slices of this many x values to bound memory.
_BOOTSTRAP_SLICE = 2048

@dataclass
class Series:
    """One run's values of one metric against the x-axis, sorted, without gaps in the data."""

    run: str  # the run's id
    x: np.ndarray
    y: np.ndarray


@dataclass
class Curve:
    """Seeds of one variant aligned on `x`; `low`/`high` are the band, `n` the seeds present."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray


def series(run: Run, metric: str, x_axis: str, smooth: int = 1) -> Series | None:
    """The metric of one run against `x_axis`, smoothed by a rolling mean over `smooth` logged
    points; None when the run never logged it."""
    if metric not in run.history or x_axis not in run.history:
        return None
    return clean_series(run.id, run.history[x_axis].to_numpy(dtype=float), run.history[metric].to_numpy(dtype=float),
                        smooth)


def clean_series(run: str, x: np.ndarray, y: np.ndarray, smooth: int = 1) -> Series | None:
    """Logged (x, y) pairs in x order, a repeated x (a resumed run) once with its latest value, smoothed by a
    rolling mean over `smooth` points; None when nothing was logged."""
    logged = ~(np.isnan(x) | np.isnan(y))
    if not logged.any():
        return None
    order = np.argsort(x[logged], kind="stable")
    x, y = x[logged][order], y[logged][order]
    last = np.append(x[1:] != x[:-1], True)
    x, y = x[last], y[last]
    if smooth > 1:
        y = pd.Series(y).rolling(smooth, min_periods=1).mean().to_numpy()
    return Series(run, x, y)


def align(runs: list[Series]) -> tuple[np.ndarray, np.ndarray]:
    """Put every run on the union of their x values: (grid, values[run, x]).

    Where a run did not log an x of the grid, it is interpolated between its neighbours only if they
    are at most about one logging interval apart; across a longer gap, or outside its range, NaN.
    """
    if _same_x(runs):  # every run logged the same x (steps, samples): the grid is theirs, nothing to interpolate
        return np.unique(runs[0].x), np.array([s.y for s in runs], dtype=float)
    grid = np.unique(np.concatenate([s.x for s in runs]))
    values = np.full((len(runs), len(grid)), np.nan)
    for i, s in enumerate(runs):
        row = np.interp(grid, s.x, s.y, left=np.nan, right=np.nan)
        if len(s.x) > 1:
            at = np.searchsorted(s.x, grid)
            right = np.clip(at, 1, len(s.x) - 1)
            gap = s.x[right] - s.x[right - 1]
            logged = s.x[np.minimum(at, len(s.x) - 1)] == grid  # np.isin(grid, s.x), s.x being sorted
            interval = np.median(np.diff(s.x))
            row[~logged & (gap > _GAP_TOLERANCE * interval)] = np.nan
        else:
            row[grid != s.x[0]] = np.nan
        values[i] = row
    return grid, values


def _same_x(runs: list[Series]) -> bool:
    """Whether every run has the first one's x, increasing, bit for bit, and a y for each: `align` then gives
    each run's y as its row (np.interp returns y itself at each x of its own), and the union grid is that x."""
    first = runs[0].x if runs else np.zeros(0)
    return (
        len(first) > 0
        and bool(np.all(first[1:] > first[:-1]))
        and all(
            s.x.dtype == first.dtype and s.x.shape == first.shape and len(s.y) == len(s.x)
            and s.x.tobytes() == first.tobytes()
            for s in runs
        )
    )


def curve(runs: list[Series], band: Band = "std", limits: tuple[float | None, float | None] = (None, None)) -> Curve:
    """Mean over seeds at each x, with a band of one standard deviation (kept within the metric's `limits`: a KL
    band never goes below 0), a bootstrap 95% CI of the mean, or the seeds' interquartile range."""
    grid, values = align(runs)
    present = ~np.isnan(values)
    n = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, values, 0.0).sum(axis=0) / n
        if band == "std":
            deviation = np.sqrt(np.where(present, (values - mean) ** 2, 0.0).sum(axis=0) / (n - 1))
            low, high = mean - deviation, mean + deviation
            if limits != (None, None):
                low, high = np.clip(low, *limits), np.clip(high, *limits)
        elif band == "iqr":
            low, high = _quartiles(values, present)
        else:
            low, high = _bootstrap_ci(values)
    # One seed has no spread: no band rather than a zero-width one that looks like certainty.
    low[n < 2] = high[n < 2] = np.nan
    return Curve(grid, mean, low, high, n)


def _quartiles(values: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 25th and 75th percentiles over the seeds present at each x."""
    low, high = np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    some = present.any(axis=0)
    low[some], high[some] = np.nanpercentile(values[:, some], [25, 75], axis=0)
    return low, high


def _bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap over seeds of the mean at each x (seeded, so reports are reproducible)."""
    n_runs = values.shape[0]
    rng = np.random.default_rng(seed)
    # counts[b, r]: how often resample b drew run r; the resampled means are then a matrix product.
    counts = rng.multinomial(n_runs, np.full(n_runs, 1 / n_runs), size=_BOOTSTRAP_RESAMPLES).astype(float)
    low, high = np.empty(values.shape[1]), np.empty(values.shape[1])
    for start in range(0, values.shape[1], _BOOTSTRAP_SLICE):
        part = values[:, start : start + _BOOTSTRAP_SLICE]
        present = ~np.isnan(part)
        with np.errstate(invalid="ignore", divide="ignore"):
            # NaN where a resample drew only seeds that did not log this x: it then does not count.
            means = (counts @ np.where(present, part, 0.0)) / (counts @ present)
        # nanquantile is much slower, so only where some resample had nothing to average.
        quantile = np.nanquantile if np.isnan(means).any() else np.quantile
        low[start : start + part.shape[1]], high[start : start + part.shape[1]] = quantile(
            means, [0.025, 0.975], axis=0
        )
    return low, high


def final_value(s: Series, last_n: int) -> float:
    """A run's end result: the mean of its last `last_n` logged values (one point is too noisy)."""
    return float(np.mean(s.y[-last_n:]))


@dataclass
class Estimate:
    mean: float
    ci95: float  # half-width; NaN with fewer than two values
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return "-"
        if np.isnan(self.ci95):
            return f"{self.mean:.3g}"
        return f"{self.mean:.3g} ± {self.ci95:.2g}"


def mean_ci95(values: list[float]) -> Estimate:
    """Mean with a Student-t 95% interval: with 3-5 seeds a bootstrap interval is far too narrow,
    and a symmetric half-width is what a `mean ± x` table can print."""
    n = len(values)
    if n == 0:
        return Estimate(float("nan"), float("nan"), 0)
    mean = float(np.mean(values))
    if n < 2:
        return Estimate(mean, float("nan"), n)
    return Estimate(mean, t975(n - 1) * float(np.std(values, ddof=1)) / np.sqrt(n), n)


def t975(df: float) -> float:
    """Student's t 0.975 quantile: the half-width of a two-sided 95% interval is t975 x standard error."""
    return float(stats.t.ppf(0.975, df))
