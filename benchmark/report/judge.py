"""What a report found: each variant against the baseline, judged by `benchmark compare`'s statistics
(verdict.py) on the results table; and, with one variant, whether its seeds rose. The page and summary.md
say it in these words, whatever ran before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from benchmark import workload
from benchmark.report.aggregate import Series
from benchmark.report.results import Results
from benchmark.report.verdict import Comparison, Direction, compare, epsilons, verdict_line


@dataclass
class Findings:
    baseline: str
    verdicts: dict[str, list[Comparison]] = field(default_factory=dict)  # candidate -> one per metric
    notes: list[str] = field(default_factory=list)  # why a variant has no verdict
    trends: list[str] = field(default_factory=list)  # a lone variant: did its seeds rise?

    def lines(self) -> list[str]:
        """The findings in words, one line each (markdown bold), for the page and summary.md."""
        lines = [f"`{candidate}` against `{self.baseline}`: {verdict_line(r)}"
                 for candidate, results in self.verdicts.items() for r in results]
        return lines + self.trends + self.notes

    def headline(self) -> str:
        """One line: each candidate's verdict on the first metric, or the lone variant's trend."""
        parts = [f"{candidate} against {self.baseline}: {r[0].metric} {r[0].verdict} "
                 f"(Δ {r[0].delta:+.3g} [{r[0].ci[0]:+.3g}, {r[0].ci[1]:+.3g}])"
                 for candidate, r in self.verdicts.items() if r]
        return "; ".join(parts) if parts else (self.trends[0].replace("**", "") if self.trends else "")


def judge(
    table: Results, variants: list[str], baseline: str | None, metrics: list[str], epsilon: list[str], last_n: int,
    alpha: float = 0.05,
) -> Findings:
    """Every variant against `baseline` (default the first) on each metric, Holm-corrected within a pair.
    ValueError: an unknown baseline, or a bad --epsilon."""
    base = baseline or variants[0]
    if base not in variants:
        raise ValueError(f"--baseline {base} is not among the variants ({', '.join(variants)})")
    eps = epsilons(epsilon, metrics)
    findings = Findings(base)
    finals = {metric: table.finals(metric, last_n) for metric in metrics}
    for candidate in variants:
        if candidate == base:
            continue
        usable = [m for m in metrics if len(finals[m].get(base, [])) >= 2 and len(finals[m].get(candidate, [])) >= 2]
        if not usable:
            findings.notes.append(f"`{candidate}` against `{base}`: no verdict, fewer than 2 runs a side")
            continue
        directions: dict[str, Direction] = {m: workload.METRIC_DIRECTIONS.get(m, "two-sided") for m in usable}
        findings.verdicts[candidate] = compare({m: finals[m][base] for m in usable},
                                               {m: finals[m][candidate] for m in usable}, directions,
                                               {m: eps[m] for m in usable}, alpha)
    if len(variants) == 1:
        findings.trends = [_trend(variants[0], m, table.series(m).get(variants[0], []), last_n) for m in metrics]
    return findings


def _trend(variant: str, metric: str, runs: list[Series], last_n: int) -> str:
    """Each seed's mean over its first `last_n` logged steps against its last `last_n`."""
    if not runs:
        return f"`{variant}` logged no {metric}"
    # The windows never overlap: a short run compares its first and last halves.
    window = min(last_n, *(len(s.y) // 2 for s in runs))
    if window < 1:
        return f"**{variant}**: {metric}: too few logged steps to tell a trend"
    starts = np.array([s.y[:window].mean() for s in runs])
    ends = np.array([s.y[-window:].mean() for s in runs])
    rises = int((ends > starts).sum())
    return (f"**{variant}**: {metric} goes from {starts.mean():.3g} (first {window} steps) to {ends.mean():.3g} "
            f"(last {window}), mean over {len(runs)} runs; it rises in {rises} of {len(runs)} "
            f"(by {(ends - starts).min():+.3g} to {(ends - starts).max():+.3g})")
