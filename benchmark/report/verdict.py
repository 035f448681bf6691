"""Is the candidate better than the baseline? One metric's final scores per seed, on each side, in;
a verdict out: better / worse / equivalent / inconclusive (changed / unchanged for a metric with no
better direction), and how many seeds per side would settle it.

The statistics are those of Colas et al. 2018 ("How many random seeds?": Welch's t-test, bootstrap
intervals, the Welch power calculation) and Agarwal et al. 2021 (rliable: IQM, probability of
improvement). `better` needs all three to agree: the difference of means' bootstrap interval lies
above 0, the probability of improvement's lies above 1/2, and Welch's test, Holm-corrected across the
metrics compared, rejects "no difference". With 3 to 5 seeds the percentile bootstrap alone is too
narrow (about 10% false alarms at a nominal 5%); Welch's test keeps them at the nominal rate.
`equivalent` is TOST: the difference's (1 - 2 alpha) interval lies within +-epsilon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from benchmark import workload

Direction = Literal["higher", "lower", "two-sided"]
RESAMPLES = 10_000
DEFAULT_EPSILON = 0.1
POWER = 0.8
_MAX_SEEDS = 10_000  # beyond this, "more seeds" is no answer


@dataclass(frozen=True)
class Comparison:
    """One metric, baseline against candidate: the numbers of compare.json, and the verdict."""

    metric: str
    direction: Direction
    verdict: str
    epsilon: float  # the difference below which the sides count as equivalent, in the metric's units
    delta: float  # mean(candidate) - mean(baseline)
    ci: tuple[float, float]  # of delta, at 1 - alpha
    p_welch: float  # two-sided
    p_holm: float  # Holm-corrected across the metrics compared
    prob_improvement: float  # P(candidate > baseline), ties counted 1/2
    prob_improvement_ci: tuple[float, float]
    seeds_needed: int | None  # per side, to detect epsilon at power 0.8; None unless inconclusive
    n_baseline: int
    n_candidate: int
    mean_baseline: float
    mean_candidate: float
    iqm_baseline: float
    iqm_candidate: float


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle half (rliable's robust aggregate)."""
    return float(stats.trim_mean(scores, 0.25))


def prob_improvement(candidate: np.ndarray, baseline: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(a candidate seed beats a baseline seed): Mann-Whitney's U over n_c * n_b, ties counted 1/2."""
    u = stats.mannwhitneyu(candidate, baseline, axis=axis, method="asymptotic").statistic
    return u / (candidate.shape[axis] * baseline.shape[axis])


def _delta(candidate: np.ndarray, baseline: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(candidate, axis=axis) - np.mean(baseline, axis=axis)


def _resampled(statistic, candidate: np.ndarray, baseline: np.ndarray, seed: int) -> np.ndarray:
    """The statistic over bootstrap resamples, each side resampled on its own (seeded: a verdict is reproducible)."""
    return stats.bootstrap((candidate, baseline), statistic, n_resamples=RESAMPLES, method="percentile",
                           vectorized=True, random_state=seed).bootstrap_distribution


def _interval(resampled: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval at `level`, as scipy's bootstrap gives it, from one set of resamples."""
    low, high = np.percentile(resampled, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def seeds_needed(baseline: np.ndarray, candidate: np.ndarray, epsilon: float, alpha: float) -> int | None:
    """Seeds per side for Welch's test to detect a difference of epsilon with power 0.8, from the
    observed variances (Colas et al. 2018, section 5); None when the variances are both zero."""
    variance_b, variance_c = float(np.var(baseline, ddof=1)), float(np.var(candidate, ddof=1))
    variance = variance_b + variance_c
    if variance == 0 or epsilon <= 0:
        return None
    # The z-test's answer is a lower bound (the t-test has less power at any n): search up from it.
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(POWER)
    for n in range(max(2, math.floor(z**2 * variance / epsilon**2)), _MAX_SEEDS + 1):
        df = (variance_b + variance_c) ** 2 / ((variance_b**2 + variance_c**2) / (n - 1))
        critical = stats.t.ppf(1 - alpha / 2, df)
        shift = epsilon / math.sqrt(variance / n)
        power = stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)
        if power >= POWER:
            return n
    return _MAX_SEEDS


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (scipy has Benjamini-Hochberg, not Holm): adjusted p-values in input order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def epsilons(specs: list[str], metrics: list[str]) -> dict[str, float]:
    """Each metric's epsilon from `--epsilon` items: `METRIC=VALUE` for one metric, a bare `VALUE` for every
    metric not named; else the workload's (workload.METRIC_EPSILONS), else DEFAULT_EPSILON. ValueError names a
    bad item."""
    named, every = {}, None
    for spec in specs:
        metric, eq, value = spec.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--epsilon expects METRIC=VALUE or VALUE, got {spec!r}") from None
        if number <= 0:
            raise ValueError(f"--epsilon must be positive, got {spec!r}")
        if eq:
            named[metric] = number
        else:
            every = number
    unknown = sorted(set(named) - set(metrics))
    if unknown:
        raise ValueError(f"--epsilon names {', '.join(unknown)}, not among the metrics compared ({', '.join(metrics)})")
    return {m: named.get(m, every if every is not None else workload.METRIC_EPSILONS.get(m, DEFAULT_EPSILON))
            for m in metrics}


def compare(
    baselines: dict[str, np.ndarray],
    candidates: dict[str, np.ndarray],
    directions: dict[str, Direction],
    epsilon: dict[str, float] | float,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[Comparison]:
    """A verdict per metric (the keys of `baselines`), Holm-corrected across them; `epsilon` per metric or one
    for all."""
    metrics = list(baselines)
    if not isinstance(epsilon, dict):
        epsilon = dict.fromkeys(metrics, epsilon)
    for metric in metrics:
        if len(baselines[metric]) < 2 or len(candidates[metric]) < 2:
            raise ValueError(f"{metric}: need at least 2 runs per side, got {len(baselines[metric])} baseline "
                             f"and {len(candidates[metric])} candidate")
    p_values = [_welch(baselines[m], candidates[m]) for m in metrics]
    return [
        _one(metric, baselines[metric], candidates[metric], directions[metric], epsilon[metric], alpha, p, p_holm,
             seed)
        for metric, p, p_holm in zip(metrics, p_values, holm(p_values), strict=True)
    ]


def _welch(baseline: np.ndarray, candidate: np.ndarray) -> float:
    p = float(stats.ttest_ind(candidate, baseline, equal_var=False).pvalue)
    return 1.0 if math.isnan(p) else p  # two identical constant samples: no evidence of a difference


def _one(
    metric: str, baseline: np.ndarray, candidate: np.ndarray, direction: Direction, epsilon: float,
    alpha: float, p_welch: float, p_holm: float, seed: int,
) -> Comparison:
    delta = float(_delta(candidate, baseline))
    deltas = _resampled(_delta, candidate, baseline, seed)
    ci, tost = _interval(deltas, 1 - alpha), _interval(deltas, 1 - 2 * alpha)
    poi = float(prob_improvement(candidate, baseline))
    poi_ci = _interval(_resampled(prob_improvement, candidate, baseline, seed), 1 - alpha)
    significant = p_holm < alpha
    up = significant and ci[0] > 0 and poi_ci[0] > 0.5
    down = significant and ci[1] < 0 and poi_ci[1] < 0.5
    same = -epsilon < tost[0] and tost[1] < epsilon
    if direction == "two-sided":
        verdict = "changed" if up or down else "unchanged" if same else "inconclusive"
    else:
        better, worse = (up, down) if direction == "higher" else (down, up)
        verdict = "better" if better else "worse" if worse else "equivalent" if same else "inconclusive"
    return Comparison(
        metric=metric, direction=direction, verdict=verdict, epsilon=epsilon, delta=delta, ci=ci, p_welch=p_welch,
        p_holm=p_holm,
        prob_improvement=poi, prob_improvement_ci=poi_ci,
        seeds_needed=seeds_needed(baseline, candidate, epsilon, alpha) if verdict == "inconclusive" else None,
        n_baseline=len(baseline), n_candidate=len(candidate),
        mean_baseline=float(np.mean(baseline)), mean_candidate=float(np.mean(candidate)),
        iqm_baseline=iqm(baseline), iqm_candidate=iqm(candidate),
    )


def verdict_line(result: Comparison) -> str:
    """One metric's verdict in words, as compare.md and the report's page give it."""
    low, high = result.ci
    poi_low, poi_high = result.prob_improvement_ci
    line = (f"**{result.metric}** ({result.direction}): **{result.verdict}**, "
            f"Δ = {result.delta:+.3g} [{low:+.3g}, {high:+.3g}], P(candidate > baseline) = "
            f"{result.prob_improvement:.2f} [{poi_low:.2f}, {poi_high:.2f}], Welch p = {result.p_welch:.3g} "
            f"(Holm {result.p_holm:.3g}), {result.n_baseline} vs {result.n_candidate} runs")
    if result.seeds_needed is not None:
        line += f"; about {result.seeds_needed} seeds a side would detect a difference of ε = {result.epsilon:g}"
    return line
