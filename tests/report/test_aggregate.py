"""Aligning seeds and the statistics, on small hand-made series."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from benchmark.report.aggregate import Series, align, curve, mean_ci95, series, t975
from benchmark.report.runs import Run


def make_series(x: list[float], y: list[float]) -> Series:
    history = pd.DataFrame({"_step": np.array(x, dtype="int64"), "m": y})
    run = Run(id="r", name="r", state="finished", config={}, summary={}, history=history)
    s = series(run, "m", "_step")
    assert s is not None
    return s


def test_union_grid_interpolates_within_one_interval_only() -> None:
    every_2 = make_series([0, 2, 4, 6], [0.0, 2.0, 4.0, 6.0])
    every_1 = make_series([0, 1, 2, 3], [10.0, 11.0, 12.0, 13.0])
    with_gap = make_series([0, 1, 2, 8, 9], [5.0, 5.0, 5.0, 5.0, 5.0])  # nothing logged between 2 and 8
    grid, values = align([every_2, every_1, with_gap])
    assert grid.tolist() == [0, 1, 2, 3, 4, 6, 8, 9]
    assert values[0].tolist()[:6] == [0, 1, 2, 3, 4, 6]  # 1 and 3 lie within its interval of 2
    assert np.isnan(values[0][6:]).all()  # past its last point
    assert np.isnan(values[1][4:]).all()
    assert np.isnan(values[2][3:6]).all()  # 3, 4, 6 fall in its gap: not invented
    assert values[2][[0, 1, 2, 6, 7]].tolist() == [5, 5, 5, 5, 5]


def test_mean_and_std_band_count_only_present_seeds() -> None:
    c = curve([make_series([0, 1], [1.0, 2.0]), make_series([0, 1, 2], [3.0, 4.0, 9.0])], band="std")
    assert c.mean.tolist() == [2.0, 3.0, 9.0] and c.n.tolist() == [2, 2, 1]
    assert c.high[0] - c.mean[0] == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert np.isnan(c.low[2])  # one seed: no band


def test_bootstrap_band_brackets_the_mean_and_is_reproducible() -> None:
    offsets = (0.0, 0.3, 0.5, 1.0)
    base = np.sin(np.arange(50) / 5)
    runs = [make_series(list(range(50)), list(base + k)) for k in offsets]
    first, second = curve(runs, band="ci95"), curve(runs, band="ci95")
    assert (first.low <= first.mean).all() and (first.mean <= first.high).all()
    assert (first.high - first.low > 0).all()
    np.testing.assert_array_equal(first.low, second.low)
    # The runs differ by constant offsets, so at every x the band is base + the 2.5% and 97.5% quantiles of
    # the mean offset over all 4^4 equally likely resamples of the 4 seeds: 0.125 and 0.825.
    low, high = np.quantile([np.mean(draw) for draw in itertools.product(offsets, repeat=4)], [0.025, 0.975])
    np.testing.assert_allclose(first.low, base + low, atol=0.05)
    np.testing.assert_allclose(first.high, base + high, atol=0.05)


def test_smoothing_is_a_rolling_mean_per_run() -> None:
    history = pd.DataFrame({"_step": [0, 1, 2, 3], "m": [0.0, 2.0, 4.0, 6.0]})
    run = Run(id="r", name="r", state="finished", config={}, summary={}, history=history)
    smoothed = series(run, "m", "_step", smooth=2)
    assert smoothed is not None and smoothed.y.tolist() == [0.0, 1.0, 3.0, 5.0]


def test_student_t_interval() -> None:
    estimate = mean_ci95([1.0, 2.0, 3.0])
    assert estimate.mean == 2.0 and estimate.n == 3
    assert estimate.ci95 == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-4)  # t(0.975, 2 df) = 4.303
    assert np.isnan(mean_ci95([1.0]).ci95) and mean_ci95([]).n == 0
    assert t975(40) == pytest.approx(2.021, abs=0.002) and t975(1000) == pytest.approx(1.962, abs=0.001)
