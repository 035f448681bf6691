"""`benchmark compare`: a verdict between two selections of runs, per metric, for a PR comment or a CI gate.

    benchmark compare --run-dir RUN --baseline main --candidate HEAD --fail-on worse

A selection is a variant name (as the report labels runs: the harness's variant, else the exp name, else the
W&B group), `tag:NAME` (a W&B tag, e.g. tag:pr-123) or `KEY=VALUE` (a config filter, as `report --filter`).
Each run's score is the mean of its last `--last-n` values of the metric; verdict.py judges the scores.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal, cast

import numpy as np
import tyro
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmark import workload
from benchmark.manifest import ManifestError
from benchmark.report import figures
from benchmark.report.aggregate import curve
from benchmark.report.results import Results
from benchmark.report.runs import BROKEN_STATES, Filters, Run, config_value, describe, exp_name, value_matches
from benchmark.report.sources import Sources, gather
from benchmark.report.verdict import Comparison, Direction, compare, epsilons, verdict_line
from benchmark.view import Group, Repeatable, flag, parse_args

FailOn = Literal["worse", "not-equivalent", "never"]
_GOOD = {"equivalent", "unchanged"}  # what --fail-on not-equivalent lets pass


@dataclass
class CompareArgs:
    """Is the candidate better than the baseline? A verdict per metric: better / worse / equivalent /
    inconclusive (changed / unchanged for a metric with no better direction), with how many seeds would settle it."""

    baseline: Annotated[str, tyro.conf.arg(metavar="SEL", help_behavior_hint="(required)")] = ""
    """the runs to compare against: a variant, tag:NAME, or KEY=VALUE"""
    candidate: Annotated[str, tyro.conf.arg(metavar="SEL", help_behavior_hint="(required)")] = ""
    """the runs under test: a variant, tag:NAME, or KEY=VALUE"""
    metric: list[str] = field(default_factory=lambda: list(workload.DEFAULT_METRICS))
    """metrics to judge; NAME:higher, NAME:lower or NAME:two-sided sets which way is better"""
    last_n: int = 10
    """a run's score is the mean of its last N logged values"""
    epsilon: Annotated[list[str], Repeatable, flag("[METRIC=]VALUE")] = field(default_factory=list)
    """the difference below which two sides count as equivalent, in the metric's units, for METRIC or every metric
    not named (unset: 0.1 for env/reward_mean, 0.5 for objective/kl, else 0.1)"""
    alpha: float = 0.05
    """significance level (Holm-corrected across the metrics); intervals are at 1 - alpha"""
    fail_on: FailOn = "never"
    """exit 1 when a metric is worse, or when any is not equivalent (a CI gate)"""
    x_axis: str = "_step"
    """x-axis of the figure's curves"""
    include_crashed: bool = False
    """score crashed and failed runs too"""
    output_dir: Annotated[Path | None, flag("DIR", "results/BASELINE-vs-CANDIDATE")] = None
    """where compare.md, compare.json and the figure go"""
    asset_url: Annotated[str | None, flag("URL", "compare.md names the figure in words")] = None
    """the URL the output folder will be uploaded to: compare.md then shows the figure from there (GitHub cannot
    show a file beside the comment)"""
    sources: Annotated[Sources, Group] = field(default_factory=Sources)


EXAMPLES = """\
  # a pull request's runs against main's, tagged by the harness (--auto-tag), failing CI when a metric got worse
  benchmark compare --entity E --project P --baseline tag:main --candidate tag:pr-12 --fail-on worse
  # two variants of one sweep, or two refs of a `--ref` sweep
  benchmark compare --run-dir runs/2026-12-05T10-00-00-peft --baseline gpt2 --candidate gpt2-peft
  # from an earlier report's table, no W&B at all
  benchmark compare --from results/peft/results.parquet --baseline "full fine-tuning" --candidate "LoRA (PEFT)"
"""


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(CompareArgs, sys.argv[1:] if argv is None else argv, "benchmark compare", EXAMPLES))


def select(runs: list[Run], selection: str) -> list[Run]:
    """The runs a selection names: `tag:NAME`, `KEY=VALUE`, else a variant name."""
    if selection.startswith("tag:"):
        return [run for run in runs if selection.removeprefix("tag:") in run.tags]
    key, eq, value = selection.partition("=")
    if eq and key:
        return [run for run in runs if value_matches(config_value(run.config, key), value)]
    return [run for run in runs if exp_name(run) == selection]


def direction_of(spec: str) -> tuple[str, Direction]:
    """`NAME[:higher|lower|two-sided]` -> the metric and which way is better (default: the workload's)."""
    name, _, given = spec.rpartition(":") if spec.endswith((":higher", ":lower", ":two-sided")) else (spec, "", "")
    return name, cast(Direction, given or workload.METRIC_DIRECTIONS.get(name, "two-sided"))


def run(args: CompareArgs, console: Console | None = None) -> int:
    """Compare and write; exit 0, 1 when --fail-on matches, 2 for unusable arguments or too few runs."""
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True, soft_wrap=True)

    def fail(message: str) -> int:
        err.print(f"[red]error:[/] {escape(message)}")
        return 2

    if not (args.baseline and args.candidate):
        return fail("name both sides: --baseline SEL --candidate SEL (a variant, tag:NAME or KEY=VALUE)")
    if problem := args.sources.problem():
        return fail(problem)
    try:
        found = gather(args.sources, Filters())
    except ManifestError as error:
        return fail(str(error))
    usable = [run for run in found.runs if not run.history.empty
              and (args.include_crashed or run.state not in BROKEN_STATES)]
    # In a `--ref` sweep, a side may name the ref as it was given at launch (`main`, `HEAD`).
    refs = {v.ref: v.name for v in found.plan.variants if v.ref} if found.plan else {}
    sides = {side: select(usable, refs.get(selection, selection))
             for side, selection in (("baseline", args.baseline), ("candidate", args.candidate))}
    metrics = dict(direction_of(spec) for spec in args.metric)
    try:
        epsilon = epsilons(args.epsilon, list(metrics))
    except ValueError as error:
        return fail(str(error))
    table = Results.of(sides, [*metrics, args.x_axis])
    scores: dict[str, dict[str, np.ndarray]] = {side: {} for side in sides}
    for metric in metrics:
        finals = table.finals(metric, args.last_n)
        for side in sides:
            scores[side][metric] = finals.get(side, np.array([]))
            if len(scores[side][metric]) < 2:
                selection = getattr(args, side)
                return fail(f"--{side} {selection} selects {len(scores[side][metric])} run(s) that logged {metric}; "
                            f"a verdict needs at least 2 a side. The sources hold: {describe(found.runs)}")
    results = compare(scores["baseline"], scores["candidate"], metrics, epsilon, args.alpha)
    out = args.output_dir or Path("results") / _slug(f"{args.baseline}-vs-{args.candidate}")
    out.mkdir(parents=True, exist_ok=True)
    written = _figure(table, scores, results, args, out)
    (out / "compare.json").write_text(json.dumps(_json(results, args), indent=2) + "\n")
    figure = next(p.name for p in written if p.suffix == ".png")
    (out / "compare.md").write_text(markdown(results, args, figure))
    console.print(_table(results, args))
    for warning in found.warnings:
        err.print("[yellow]warning:[/] " + escape(warning), highlight=False)
    console.print(f"wrote {out}/: compare.md, compare.json, {', '.join(p.name for p in written)}")
    verdicts = [result.verdict for result in results]
    failed = ("worse" in verdicts) if args.fail_on == "worse" else (
        args.fail_on == "not-equivalent" and any(v not in _GOOD for v in verdicts))
    return 1 if failed else 0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


_HEADERS = ("metric", "direction", "ε", "baseline mean (IQM)", "candidate mean (IQM)", "Δ [CI]", "Welch p (Holm)",
            "P(improvement) [CI]", "verdict", "seeds a side for ε")


def _cells(r: Comparison) -> list[str]:
    return [
        r.metric, r.direction, f"{r.epsilon:g}",
        f"{r.mean_baseline:.3g} ({r.iqm_baseline:.3g}), n={r.n_baseline}",
        f"{r.mean_candidate:.3g} ({r.iqm_candidate:.3g}), n={r.n_candidate}",
        f"{r.delta:+.3g} [{r.ci[0]:+.3g}, {r.ci[1]:+.3g}]",
        f"{r.p_welch:.3g} ({r.p_holm:.3g})",
        f"{r.prob_improvement:.2f} [{r.prob_improvement_ci[0]:.2f}, {r.prob_improvement_ci[1]:.2f}]",
        r.verdict,
        "" if r.seeds_needed is None else str(r.seeds_needed),
    ]


def _method(args: CompareArgs) -> str:
    level = round(100 * (1 - args.alpha))
    return (f"Score: each run's mean over its last {args.last_n} logged values. Δ = mean(candidate) - mean(baseline), "
            f"{level}% percentile bootstrap interval (10,000 resamples, each side resampled on its own). better / "
            f"worse (changed): Δ's interval excludes 0, P(improvement)'s excludes 0.5 the same way, and Welch's "
            f"test, Holm-corrected across the {len(args.metric)} metric(s), has p < {args.alpha}. equivalent "
            f"(unchanged): Δ's {round(100 * (1 - 2 * args.alpha))}% interval lies within ±ε (TOST; ε per metric "
            "above). "
            "Seeds a side: Welch's test at power 0.8 for a difference of ε, from the observed variances.")


def markdown(results: list[Comparison], args: CompareArgs, figure: str) -> str:
    """compare.md, for a PR comment: the figure from `--asset-url` where the folder was uploaded, else in words (a
    file beside the comment is a broken image on GitHub)."""
    lines = [f"## benchmark compare: `{args.candidate}` against `{args.baseline}`", ""]
    lines += [f"- {verdict_line(result)}" for result in results]
    lines += ["", "| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    lines += ["| " + " | ".join(_cells(result)) + " |" for result in results]
    if args.asset_url:
        lines += ["", f"![{figure}]({args.asset_url.rstrip('/')}/{figure})"]
    else:
        lines += ["", f"The figure (curves and each run's final score) is `{figure}` beside this file; pass "
                      "`--asset-url URL` of where the folder is uploaded to show it here."]
    lines += ["", _method(args), ""]
    return "\n".join(lines)


def _json(results: list[Comparison], args: CompareArgs) -> dict[str, object]:
    return {
        "baseline": args.baseline, "candidate": args.candidate, "last_n": args.last_n, "alpha": args.alpha,
        "metrics": [asdict(result) for result in results],
    }


def _table(results: list[Comparison], args: CompareArgs) -> Table:
    table = Table(title=f"{args.candidate} against {args.baseline}", caption=_method(args))
    for header in _HEADERS:
        table.add_column(header)
    for result in results:
        table.add_row(*_cells(result))
    return table


def _figure(table: Results, scores: dict[str, dict[str, np.ndarray]], results: list[Comparison],
            args: CompareArgs, out: Path) -> list[Path]:
    labels = {"baseline": f"baseline: {args.baseline}", "candidate": f"candidate: {args.candidate}"}
    curves = {r.metric: {labels[side]: curve(found) for side, found in table.series(r.metric, args.x_axis).items()}
              for r in results}
    finals = {r.metric: {labels[side]: scores[side][r.metric] for side in labels} for r in results}
    titles = {r.metric: f"{r.metric}: {r.verdict}" for r in results}
    return figures.plot_comparison(curves, finals, titles, args.x_axis, out / "compare")
