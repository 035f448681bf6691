"""`benchmark report` / `python -m benchmark.report`: runs in; a page, a results table and its verdicts out.

The steps, in order: gather runs from the sources, keep those the filters select, name their variants (the
presets', --filters' or the exp names: one name everywhere), turn them into the tidy results table
(results.py), and from that table alone: the summary rows, each variant judged against the baseline
(judge.py), the static figures, the compare figures, and the interactive page (page.py).
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape

from benchmark import workload
from benchmark.manifest import ManifestError
from benchmark.report import cloud, figures, page, summary
from benchmark.report import openrlbenchmark as orb
from benchmark.report.aggregate import Band, Curve, curve
from benchmark.report.judge import Findings, judge
from benchmark.report.presets import PRESET_TITLES, Preset, preset_selection
from benchmark.report.provenance import provenance
from benchmark.report.results import X_AXES, Results
from benchmark.report.runs import (
    BROKEN_STATES,
    Filters,
    Found,
    Run,
    describe,
    exp_name,
    group_runs,
    key_of,
    parse_assignments,
)
from benchmark.report.sources import Sources, gather
from benchmark.view import Group, Repeatable, flag, parse_args


@dataclass
class Selection:
    """Which runs count (cloud runs are narrowed on W&B's server)."""

    tags: Annotated[list[str], flag(unset="any")] = field(default_factory=list)
    """keep runs that carry all these tags"""
    group: Annotated[str | None, flag("GROUP", "any")] = None
    """keep runs of this W&B group"""
    state: Annotated[str | None, flag("STATE", "any")] = None
    """keep runs in this state (finished, running, crashed, failed)"""
    filter: Annotated[list[str], Repeatable, flag("KEY=VALUE")] = field(default_factory=list)
    """keep runs whose config has KEY=VALUE (dotted keys, e.g. trl_ppo_trainer_config.exp_name=x)"""
    include_crashed: bool = False
    """average crashed and failed runs in too (the table says so)"""


@dataclass
class Output:
    """Where the report goes and what it is called."""

    name: Annotated[str | None, flag("NAME", "the run dir's or project's name")] = None
    """report name"""
    output_dir: Annotated[Path | None, flag("DIR", "results/NAME")] = None
    """where to write"""
    title: Annotated[str | None, flag("TEXT", "the preset's, else the report's name")] = None
    """the page's title"""
    finding: Annotated[str | None, flag("TEXT", "the verdicts' headline, or the lone variant's trend")] = None
    """the one line under the title"""
    asset_url: Annotated[str | None, flag("URL", "summary.md names them")] = None
    """the URL the output folder will be uploaded to: summary.md then shows the figures from there (GitHub shows
    no file beside a comment)"""


@dataclass
class OpenRLBenchmark:
    """openrlbenchmark's command line (rlops_multi_metrics), so that TRL's plot.sh lines run as they are."""

    filters: Annotated[list[list[str]], Repeatable] = field(default_factory=list)
    """filter groups: '?we=E&wpn=P&xaxis=X&ceik=KEY&cen=KEY&metrics=M', then 'EXP_NAME?tag=T&user=U&cl=LABEL' per
    variant; they set the variants, metrics and x-axis, and read W&B E/P unless --wandb-dir/--run-dir is given"""
    env_ids: Annotated[list[list[str]], Repeatable] = field(default_factory=list)
    """with --filters: keep runs whose config[ceik] is one of these (once for every group, or once per group);
    several make one variant per env, 'LABEL (ENV)'"""
    check_empty_runs: bool = True
    """with --filters: a selection matching no run is an error (else a warning, and it is left out)"""
    output_filename: Annotated[Path | None, flag("PATH", "none")] = None
    """openrlbenchmark's output stem: where it writes PATH.png we write the report into the folder PATH/ (the flag
    --output-dir wins)"""
    scan_history: bool = False
    """accepted for openrlbenchmark's command lines; histories are always read in full (never sampled)"""


@dataclass
class ReportArgs:
    """A page that says what the runs found: seed-aggregated curves, verdicts against the baseline, a table and
    the tidy results.parquet, from W&B (cloud or offline), TensorBoard or earlier results."""

    metrics: list[str] = field(default_factory=lambda: list(workload.DEFAULT_METRICS))
    """metrics to plot, one panel each, and to tabulate, a final value each"""
    x_axis: str = "_step"
    """x-axis of the static figures and the page's first: _step, _samples (rollouts), _tokens (response
    tokens), _runtime (wall time), or any logged metric; the page offers the others too"""
    group_by: Annotated[str | None, flag("KEY", "the exp name, exp_name or trl_ppo_trainer_config.exp_name")] = None
    """config key whose value makes a variant, or tag:A,B (each run in the group of the first of these tags it
    carries: main against pr-12)"""
    labels: Annotated[list[str], Repeatable, flag("OLD=NEW")] = field(default_factory=list)
    """rename a variant in figures and table"""
    preset: Annotated[list[Preset], flag(unset="none")] = field(default_factory=list)
    """draw the seed's comparisons instead of one figure of all variants"""
    smooth: int = 1
    """rolling mean over this many logged points of each run before averaging"""
    band: Band = "std"
    """band around the mean: std over seeds (kept within the metric's range: KL >= 0), ci95 (bootstrap 95% CI of
    the mean), or iqr (the seeds' 25th to 75th percentiles)"""
    last_n: int = 10
    """final values are each run's mean over its last N logged steps"""
    baseline: Annotated[str | None, flag("VARIANT", "the first")] = None
    """the variant every other one is judged against"""
    epsilon: Annotated[list[str], Repeatable, flag("[METRIC=]VALUE")] = field(default_factory=list)
    """the difference below which a variant counts as equivalent, in the metric's units, for METRIC or every metric
    not named (unset: 0.1 for env/reward_mean, 0.5 for objective/kl, else 0.1)"""
    sources: Annotated[Sources, Group] = field(default_factory=Sources)
    selection: Annotated[Selection, Group] = field(default_factory=Selection)
    output: Annotated[Output, Group] = field(default_factory=Output)
    openrlbenchmark: Annotated[OpenRLBenchmark, Group] = field(default_factory=OpenRLBenchmark)
    pc: orb.PlotConfig = field(default_factory=orb.PlotConfig)
    """the page's layout, openrlbenchmark's --pc.*"""


EXAMPLES = """\
  # a sweep's own runs (the W&B runs its jobs wrote), the seed's comparisons drawn
  benchmark report --run-dir runs/2026-12-05T10-00-00-peft --preset peft
  # offline W&B runs and TensorBoard event files, judged against one variant
  benchmark report --wandb-dir wandb --tensorboard-dir tb --baseline gpt2 --metrics env/reward_mean objective/kl
  # two earlier reports against each other, no W&B at all
  benchmark report --from main=results/peft/results.parquet --from pr-12=new/results.parquet
"""


def main(argv: list[str] | None = None) -> int:
    return report(parse_args(ReportArgs, sys.argv[1:] if argv is None else argv, "benchmark report", EXAMPLES))


def report(args: ReportArgs, console: Console | None = None) -> int:
    """Write the report; exit code 0, 1 when no run matches, 2 for unusable arguments, sources or metrics."""
    # Piped to a file or CI log, rich would wrap the table at 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True, soft_wrap=True)

    def fail(message: str) -> int:
        err.print(f"[red]error:[/] {escape(message)}")
        return 2

    try:
        keep = args.selection
        filters = Filters(keep.tags, keep.group, keep.state, parse_assignments(keep.filter, "--filter"))
        labels = parse_assignments(args.labels, "--labels")
    except ValueError as error:
        return fail(str(error))
    selected: dict[str, list[Run]] | None = None
    try:
        if args.openrlbenchmark.filters:  # openrlbenchmark's syntax: its groups choose sources, runs, metrics, variants
            args, found, selected = _from_filter_groups(args, filters)
            runs = list({run.id: run for group in selected.values() for run in group}.values())
        else:
            if problem := args.sources.problem():
                return fail(problem)
            found = gather(args.sources, filters)
            runs = [run for run in found.runs if filters.keep(run)]
    except (ValueError, ManifestError) as error:
        return fail(str(error))
    if not runs:
        err.print(f"[red]No runs match[/] the filters ({escape(filters.describe())}); " + escape(describe(found.runs)))
        _print_warnings(found.warnings, err)
        return 1
    warnings = list(found.warnings)
    logged = {column for run in runs for column in run.history.columns}
    # A default metric, not asked for by name, that no run logged (a run of another workload): left out.
    if args.metrics == list(workload.DEFAULT_METRICS) and (
        missing := [m for m in args.metrics if m not in logged and logged > {"_step"}]
    ):
        warnings.append(f"no run logged {', '.join(missing)} (a default of --metrics); left out")
        args = replace(args, metrics=[m for m in args.metrics if m not in missing])
    if problem := _unknown_metrics([*args.metrics, *([] if args.x_axis in X_AXES else [args.x_axis])], logged):
        return fail(problem)

    groups, comparisons = _variants(runs, args, labels, selected, warnings)
    expected = _expected_by_label(found.expected_seeds or {}, groups, labels)
    table = Results.of(groups, [*args.metrics, workload.SAMPLES_PER_S, args.x_axis])
    used = table.only(table.runs["run"][args.selection.include_crashed | ~table.runs["state"].isin(BROKEN_STATES)])
    with_data = set(used.points["variant"].unique())
    drawn = [v for v in groups if v in with_data]
    try:
        findings = judge(used, drawn, args.baseline, args.metrics, args.epsilon, args.last_n) if drawn else None
    except ValueError as error:
        return fail(str(error))

    name = args.output.name or (args.sources.run_dir.name if args.sources.run_dir else args.sources.project) or "report"
    out = args.output.output_dir or args.openrlbenchmark.output_filename or Path("results") / name
    out.mkdir(parents=True, exist_ok=True)
    table.write(out / "results.parquet")
    rows = summary.rows_of(table, args.metrics, args.last_n, expected, args.selection.include_crashed)
    written = []
    for title, variants in comparisons:
        curves = _curves(used, variants, args, args.x_axis, warnings)
        if curves:
            written += figures.plot(curves, args.x_axis, f"{name}: {title}", out / title, args.band)
        else:
            warnings.append(f"{title}: none of the metrics {args.metrics} was logged by its runs; no figure")
    images = _compare_figures(used, findings, args, out) if findings else []
    title = args.output.title or (PRESET_TITLES[args.preset[0]] if len(args.preset) == 1 else name)
    finding = args.output.finding if args.output.finding is not None else (findings.headline() if findings else "")
    lines = findings.lines() if findings else []
    pngs = [p.name for p in written if p.suffix == ".png"] + [p.name for p in images if p.suffix == ".png"]
    summary.write_markdown(rows, args.metrics, out / "summary.md", args.last_n, title, finding, lines, pngs,
                           args.output.asset_url)
    summary.write_csv(rows, out / "summary.csv")
    page.write_page(out, _page(used, table, rows, args, title, finding, lines, images, warnings, found))

    summary.print_table(rows, args.metrics, console)
    for line in lines:
        console.print(line.replace("**", "").replace("`", ""), highlight=False)
    _print_warnings(warnings, err)
    console.print(f"wrote {out}/: index.html, results.parquet, summary.md, summary.csv, "
                  + ", ".join(p.name for p in [*written, *images]))
    return 0


def _variants(
    runs: list[Run], args: ReportArgs, labels: dict[str, str], selected: dict[str, list[Run]] | None,
    warnings: list[str],
) -> tuple[dict[str, list[Run]], list[tuple[str, list[str]]]]:
    """The runs by variant (one name per variant everywhere: the presets' labels, --filters' cl=, --labels), and the
    static figures to draw: (title, its variants)."""
    if selected is not None:  # --filters chose and labelled the variants: a run may be in two
        return dict(selected), [("curves", list(selected))]
    if args.preset:
        groups: dict[str, list[Run]] = {}
        comparisons = []
        logged = [run for run in runs if not run.history.empty]
        for preset in args.preset:
            chosen, label = preset_selection(preset, logged)
            for run in chosen:
                groups.setdefault(labels.get(label(run), label(run)), []).append(run)
            comparisons.append((preset, list(dict.fromkeys(labels.get(label(r), label(r)) for r in chosen))))
        # A run no preset compares still has its row, under its exp name.
        placed = {run.id for group in groups.values() for run in group}
        for run in runs:
            if run.id not in placed:
                groups.setdefault(labels.get(exp_name(run), exp_name(run)), []).append(run)
        return groups, comparisons
    if args.group_by and args.group_by.startswith("tag:"):
        wanted = [t for t in args.group_by.removeprefix("tag:").split(",") if t]
        groups = {}
        for run in runs:
            tag = next((t for t in wanted if t in run.tags), None)
            if tag is None:
                warnings.append(f"run {run.name} carries none of the tags {', '.join(wanted)}; left out")
            else:
                groups.setdefault(labels.get(tag, tag), []).append(run)
        return groups, [("curves", list(groups))]
    groups = group_runs(runs, key_of(args.group_by), labels)
    return groups, [("curves", list(groups))]


def _expected_by_label(
    expected: dict[str, list[int]], groups: dict[str, list[Run]], labels: dict[str, str]
) -> dict[str, list[int]]:
    """The run dir's expected seeds under the names the variants are shown by: a preset names a sweep's variant
    after what it compares (its model, its accumulation), and that name, not the sweep's, is its row."""
    shown: dict[str, set[str]] = {}
    for label, runs in groups.items():
        for run in runs:
            if run.variant is not None:
                shown.setdefault(run.variant, set()).add(label)
    by_label: dict[str, list[int]] = {}
    for variant, seeds in expected.items():
        names = shown.get(variant, {labels.get(variant, variant)})
        for name in names if len(names) == 1 else {labels.get(variant, variant)}:
            by_label[name] = sorted({*by_label.get(name, []), *seeds})
    return by_label


def _unknown_metrics(metrics: list[str], logged: set[str]) -> str | None:
    """A metric not among the `logged` columns, with the logged names closest to it; None when every one was
    logged somewhere (or nothing was logged yet: a sweep just started has a table and no curves)."""
    if logged <= {"_step"}:
        return None
    for metric in metrics:
        if metric not in logged:
            close = difflib.get_close_matches(metric, sorted(logged), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; logged: {', '.join(sorted(logged)[:20])}"
            return f"no run logged the metric {metric}" + hint
    return None


def _curves(
    table: Results, variants: list[str], args: ReportArgs, x_axis: str, warnings: list[str] | None
) -> dict[str, dict[str, Curve]]:
    """curves[metric][variant] against `x_axis` for every metric some run logged; names the runs lacking one."""
    curves: dict[str, dict[str, Curve]] = {}
    names = dict(zip(table.runs["run"], table.runs["name"], strict=True))
    # A job with no data yet is a table entry, not a run "missing a metric".
    logged = set(table.points["run"].unique()) if warnings is not None else set()
    for metric in args.metrics:
        found = table.series(metric, x_axis, args.smooth)
        for variant in variants:
            if found.get(variant):
                limits = workload.METRIC_LIMITS.get(metric, (None, None))
                curves.setdefault(metric, {})[variant] = curve(found[variant], args.band, limits)
        if warnings is not None:
            have = {s.run for group in found.values() for s in group}
            of_variants = table.runs[table.runs["variant"].isin(variants)]
            lacking = [names[r] for r in dict.fromkeys(of_variants["run"]) if r in logged and r not in have]
            if lacking:
                warnings.append(f"{metric} (x: {x_axis}) missing from runs {', '.join(lacking)}; plotted where present")
    return curves


def _compare_figures(table: Results, findings: Findings, args: ReportArgs, out: Path) -> list[Path]:
    """`benchmark compare`'s figure for each candidate against the baseline."""
    written = []
    for candidate, results in findings.verdicts.items():
        pair = [findings.baseline, candidate]
        by_metric = _curves(table, pair, args, args.x_axis, None)
        curves = {r.metric: by_metric.get(r.metric, {}) for r in results}
        finals = {}
        for r in results:
            of_metric = table.finals(r.metric, args.last_n)
            finals[r.metric] = {v: of_metric.get(v, np.array([])) for v in pair}
        titles = {r.metric: f"{r.metric}: {r.verdict}" for r in results}
        stem = out / ("compare-" + re.sub(r"[^A-Za-z0-9_.+-]+", "_", candidate))
        written += figures.plot_comparison(curves, finals, titles, args.x_axis, stem)
    return written


def _page(
    used: Results, table: Results, rows: list[summary.Row], args: ReportArgs, title: str, finding: str,
    lines: list[str], images: list[Path], warnings: list[str], found: Found,
) -> page.PageData:
    """The interactive page's data: every metric against every x-axis the runs logged, the table, the findings,
    the provenance and a few generations per variant."""
    variants = list(dict.fromkeys(table.runs["variant"]))
    axes = list(dict.fromkeys([args.x_axis, *X_AXES]))
    seeds = {r: f"seed {s}" if s is not None and not pd.isna(s) else n
             for r, s, n in zip(used.runs["run"], used.runs["seed"], used.runs["name"], strict=True)}
    traces: dict[str, dict[str, dict[str, page.Trace]]] = {}
    for axis in axes:
        by_metric = _curves(used, variants, args, axis, None)
        for metric, by_variant in by_metric.items():
            found_series = used.series(metric, axis, args.smooth)
            traces.setdefault(metric, {})[X_AXES.get(axis, axis)] = {
                variant: page.Trace(
                    x=c.x.tolist(), mean=c.mean.tolist(), low=c.low.tolist(), high=c.high.tolist(), n=c.n.tolist(),
                    per_seed={seeds.get(s.run, s.run): (s.x.tolist(), s.y.tolist()) for s in found_series[variant]},
                )
                for variant, c in by_variant.items()
            }
    shown_axes = [X_AXES.get(a, a) for a in axes if any(X_AXES.get(a, a) in t for t in traces.values())]
    samples = {}
    for variant, meta in zip(table.runs["variant"], table.runs["meta"], strict=True):
        if meta.get("samples") and len(samples.setdefault(variant, [])) < 3:
            samples[variant] += [tuple(s) for s in meta["samples"]][: 3 - len(samples[variant])]
    band = {"std": "mean ± one std over seeds, within the metric's range", "ci95": "bootstrap 95% CI of the mean",
            "iqr": "interquartile range over seeds"}[args.band]
    return page.PageData(
        title=title, finding=finding, verdicts=lines, metrics=[m for m in args.metrics if m in traces],
        x_axes=shown_axes or [X_AXES.get(args.x_axis, args.x_axis)], variants=variants, traces=traces, band=band,
        ncols=args.pc.ncols, ncols_legend=args.pc.ncols_legend,
        table_headers=summary.headers(args.metrics), table_rows=[row.cells() for row in rows],
        table_sort_values=[row.sort_values() for row in rows],
        provenance=provenance(table.runs, found.plan, found.expected_seeds),
        samples=samples, images=[(p.name, p.stem) for p in images if p.suffix == ".png"], warnings=warnings,
        footnote=summary.footnote(args.last_n),
    )


def _from_filter_groups(args: ReportArgs, filters: Filters) -> tuple[ReportArgs, Found, dict[str, list[Run]]]:
    """--filters: the runs each selection chooses (label -> runs), read from the local sources given, else
    fetched from the groups' W&B projects; and the args with the groups' metrics, x-axis and a name."""
    if args.preset or args.group_by or args.labels:
        raise ValueError("--filters chooses and labels (cl=) the variants itself: drop --preset, --group-by, --labels")
    groups = orb.parse_filters(args.openrlbenchmark.filters)
    env_ids = orb.env_ids_per_group(args.openrlbenchmark.env_ids, len(groups))
    metrics, x_axis = orb.metrics_and_x_axis(groups)
    if args.sources.local():  # local runs: the filters choose among them
        if problem := args.sources.problem():
            raise ValueError(problem)
        found = gather(args.sources, filters)
    else:  # as openrlbenchmark: each selection's runs, narrowed on the server, full histories, cached
        found = Found()
        for entity, project, query in orb.cloud_queries(groups, env_ids, args.sources.entity, args.sources.project):
            found.add(cloud.fetch_runs(entity, project, query, args.sources.cache_dir, args.sources.refresh))
    runs = [run for run in found.runs if filters.keep(run)]
    selected = orb.select_groups(runs, groups, env_ids)
    if empty := orb.unmatched(runs, groups, env_ids, selected):
        if args.openrlbenchmark.check_empty_runs:
            raise ValueError("\n".join(empty) + "\n(--no-check-empty-runs leaves such selections out with a warning)")
        found.warnings += empty
        selected = {label: group for label, group in selected.items() if group}
    stem = args.openrlbenchmark.output_filename
    name = args.output.name or (stem.name if stem else groups[0].project or args.sources.project)
    return replace(args, metrics=metrics, x_axis=x_axis, output=replace(args.output, name=name)), found, selected


def _print_warnings(warnings: list[str], err: Console) -> None:
    for warning in warnings:
        err.print("[yellow]warning:[/] " + escape(warning), highlight=False)
