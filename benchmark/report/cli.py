"""`benchmark report` / `python -m benchmark.report`: runs in, figures and a table out.

The steps, in order: gather runs from the sources, keep those the filters select, group them into
variants (or the presets' comparisons), average seeds into curves, draw, and write the summary.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro
from rich.console import Console
from rich.markup import escape

from benchmark import workload
from benchmark.manifest import Manifest, ManifestError
from benchmark.report import cloud, figures, offline, rundir, summary
from benchmark.report.aggregate import Band, Curve, curve, series
from benchmark.report.presets import Preset, preset_selection
from benchmark.report.runs import BROKEN_STATES, Filters, Found, Run, describe, group_runs, key_of, parse_assignments
from benchmark.report.verdict import read_verdicts

Repeatable = tyro.conf.UseAppendAction


@dataclass
class Sources:
    """Where runs come from; `benchmark report` and `benchmark compare` read the same."""

    wandb_dir: Annotated[list[Path], Repeatable] = field(default_factory=list)
    """a folder holding wandb's offline-run-*/run-* folders, or one such folder"""
    entity: str | None = None
    """W&B entity of the cloud runs (with --project)"""
    project: str | None = None
    """W&B project of the cloud runs (with --entity)"""
    run_dir: Path | None = None
    """a harness run dir: its variants and expected seeds, and where each job's W&B run is"""
    refresh: bool = False
    """refetch cloud runs even when cached"""
    cache_dir: Path = field(default_factory=cloud.default_cache_dir)
    """where fetched cloud runs are cached"""

    def problem(self) -> str | None:
        """What is wrong with the sources given, for an error message; None when they can be read."""
        if not (self.wandb_dir or self.project or self.run_dir):
            return "name a source: --wandb-dir, --entity/--project or --run-dir"
        if self.project and not self.entity:
            return "--project needs --entity"
        return None


@dataclass
class ReportArgs(Sources):
    """Seed-aggregated learning curves and a summary table from W&B runs (cloud or offline)."""

    tags: list[str] = field(default_factory=list)
    """keep runs that carry all these tags"""
    group: str | None = None
    """keep runs of this W&B group"""
    state: str | None = None
    """keep runs in this state (finished, running, crashed, failed)"""
    filter: Annotated[list[str], Repeatable] = field(default_factory=list)
    """keep runs whose config has KEY=VALUE (dotted keys, e.g. trl_ppo_trainer_config.exp_name=x)"""
    metrics: list[str] = field(default_factory=lambda: list(workload.DEFAULT_METRICS))
    """metrics to plot, one panel each, and to tabulate, a final value each"""
    x_axis: str = "_step"
    """x-axis: _step, or _runtime for wall time"""
    group_by: str | None = None
    """config key whose value makes a variant; unset: the exp name (exp_name or trl_ppo_trainer_config.exp_name)"""
    labels: Annotated[list[str], Repeatable] = field(default_factory=list)
    """rename a variant in figures and table: OLD=NEW"""
    smooth: int = 1
    """rolling mean over this many logged points of each run before averaging"""
    band: Band = "std"
    """band around the mean: std over seeds, or ci95 (bootstrap 95% CI of the mean)"""
    preset: list[Preset] = field(default_factory=list)
    """draw the seed's comparisons instead of one figure of all variants"""
    last_n: int = 10
    """final values are each run's mean over its last N logged steps"""
    include_crashed: bool = False
    """average crashed and failed runs in too (the table says so)"""
    name: str | None = None
    """report name; unset: the run dir's or project's name"""
    output_dir: Path | None = None
    """where to write; unset: results/<name>"""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(ReportArgs, args=argv, prog="benchmark report")
    return report(args)


def report(args: ReportArgs, console: Console | None = None) -> int:
    """Write the report; exit code 0, 1 when no run matches, 2 for unusable arguments or run dir."""
    # Piped to a file or CI log, rich would wrap the table at 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True, soft_wrap=True)
    try:
        filters = Filters(args.tags, args.group, args.state, parse_assignments(args.filter, "--filter"))
        labels = parse_assignments(args.labels, "--labels")
    except ValueError as error:
        err.print(f"[red]error:[/] {escape(str(error))}")
        return 2
    if problem := args.problem():
        err.print(f"[red]error:[/] {escape(problem)}")
        return 2
    try:
        found = gather(args, filters)
    except ManifestError as error:
        err.print(f"[red]error:[/] {escape(str(error))}")
        return 2
    runs = [run for run in found.runs if filters.keep(run)]
    if not runs:
        err.print(f"[red]No runs match[/] the filters ({escape(filters.describe())}); " + escape(describe(found.runs)))
        _print_warnings(found.warnings, err)
        return 1

    name = args.name or (args.run_dir.name if args.run_dir else args.project) or "report"
    out = args.output_dir or Path("results") / name
    out.mkdir(parents=True, exist_ok=True)
    warnings = list(found.warnings)
    written = _draw(runs, name, out, args, labels, warnings)
    rows = _table(runs, found.expected_seeds or {}, args, labels)
    svgs = [p for p in written if p.suffix == ".svg"]
    summary.write_markdown(rows, args.metrics, out / "summary.md", args.last_n)
    summary.write_csv(rows, out / "summary.csv")
    summary.write_html(rows, args.metrics, svgs, warnings, out / "index.html", args.last_n, read_verdicts(out))

    summary.print_table(rows, args.metrics, console)
    _print_warnings(warnings, err)
    console.print(f"wrote {out}/: {', '.join(p.name for p in written)}, summary.md, summary.csv, index.html")
    return 0


def _used(group: list[Run], args: ReportArgs) -> list[Run]:
    """The runs that are averaged: crashed and failed ones only when asked for."""
    return [run for run in group if args.include_crashed or run.state not in BROKEN_STATES]


def _draw(
    runs: list[Run], name: str, out: Path, args: ReportArgs, labels: dict[str, str], warnings: list[str]
) -> list[Path]:
    """One figure per comparison (the presets asked for, else all variants); the files written."""
    # Jobs with no W&B data yet count in the table, not in the figures.
    logged = [run for run in runs if not run.history.empty]
    if args.preset:
        comparisons = [(preset, *preset_selection(preset, logged)) for preset in args.preset]
    else:
        comparisons = [("curves", logged, key_of(args.group_by))]
    written: list[Path] = []
    for title, chosen, key in comparisons:
        groups = {label: _used(group, args) for label, group in group_runs(chosen, key, labels).items()}
        curves = _curves(groups, args, warnings)
        if not curves:
            warnings.append(f"{title}: none of the metrics {args.metrics} was logged by its runs; no figure")
            continue
        written += figures.plot(curves, args.x_axis, f"{name}: {title}", out / title, args.band)
    return written


def _table(
    runs: list[Run], expected_seeds: dict[str, list[int]], args: ReportArgs, labels: dict[str, str]
) -> list[summary.Row]:
    """A row per variant of the default grouping (or --group-by), whatever the presets drew."""
    expected = {labels.get(v, v): seeds for v, seeds in expected_seeds.items()}
    variants = group_runs(runs, key_of(args.group_by), labels)
    if args.group_by is None:  # the sweep's variants: one none of whose jobs started is still a row
        for variant in expected:
            variants.setdefault(variant, [])
    return [
        summary.summarize(
            variant, group, _used(group, args), args.metrics, args.last_n, expected.get(variant), args.include_crashed
        )
        for variant, group in variants.items()
    ]


def gather(args: Sources, filters: Filters) -> Found:
    """Every run the sources hold (cloud runs narrowed by `filters` already), matched to the run
    dir's jobs when one is given."""
    found = Found()
    manifest = Manifest.load(args.run_dir) if args.run_dir else None
    if manifest and not (args.wandb_dir or args.project):
        # Only the sweep's own runs are decoded from the folders its jobs wrote to.
        offline.read_runs(rundir.run_files(manifest), found)
    else:
        files: list[Path] = []
        for directory in args.wandb_dir:
            here = offline.find_run_files(directory)
            if not here:
                found.warnings.append(f"{directory}: no offline-run-*/run-* folders with a .wandb file")
            files += here
        offline.read_runs(files, found)
    if args.project and args.entity:
        found.add(cloud.fetch_runs(args.entity, args.project, filters, args.cache_dir, args.refresh))
    if manifest:
        found.plan = manifest.plan
        found.runs, found.expected_seeds = rundir.match_jobs(manifest, found.runs)
    return found


def _curves(groups: dict[str, list[Run]], args: ReportArgs, warnings: list[str]) -> dict[str, dict[str, Curve]]:
    """curves[metric][variant] for every metric that some run logged; names the runs lacking one."""
    curves: dict[str, dict[str, Curve]] = {}
    for metric in args.metrics:
        lacking = []
        for variant, group in groups.items():
            found = []
            for run in group:
                s = series(run, metric, args.x_axis, args.smooth)
                if s is None:
                    lacking.append(run.name)
                else:
                    found.append(s)
            if found:
                curves.setdefault(metric, {})[variant] = curve(found, args.band)
        if lacking:
            warnings.append(
                f"{metric} (x: {args.x_axis}) missing from runs {', '.join(lacking)}; plotted where present"
            )
    return curves


def _print_warnings(warnings: list[str], err: Console) -> None:
    for warning in warnings:
        err.print("[yellow]warning:[/] " + escape(warning), highlight=False)
