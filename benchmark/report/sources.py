"""Where runs come from, for `benchmark report` and `benchmark compare` alike: offline W&B folders, TensorBoard
event files, the W&B cloud, a harness run dir, and earlier reports' results.parquet.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmark.manifest import Manifest
from benchmark.report import cloud, offline, rundir
from benchmark.report.results import Results
from benchmark.report.runs import Filters, Found, Run, exp_name
from benchmark.view import Repeatable, flag


@dataclass
class Sources:
    """Where runs come from; `benchmark report` and `benchmark compare` read the same."""

    wandb_dir: Annotated[list[Path], Repeatable, flag("[LABEL=]DIR")] = field(default_factory=list)
    """a folder holding wandb's offline-run-*/run-* folders, or one such folder; a LABEL names its runs' variants
    VARIANT (LABEL), so that two sources' same variant stay apart"""
    tensorboard_dir: Annotated[list[Path], Repeatable, flag("[LABEL=]DIR")] = field(
        default_factory=list)
    """a folder of TensorBoard runs (folders of event files), searched recursively; LABEL as for --wandb-dir"""
    run_name_pattern: Annotated[str | None, tyro.conf.arg(
        metavar="REGEX", help_behavior_hint="(unset or unmatched: trl_ppo's <variant>__<seed>__<time>)")] = None
    """regex the whole name of a TensorBoard run's folder must match, with groups (?P<variant>...) and (?P<seed>...)"""
    from_results: Annotated[list[str], Repeatable, tyro.conf.arg(name="from", metavar="[LABEL=]PATH")] = field(
        default_factory=list)
    """an earlier report's results.parquet: its runs again, with no W&B at all; a LABEL names its variants
    VARIANT (LABEL), so two sources' same variant stay apart"""
    entity: Annotated[str | None, flag("ENTITY", "none")] = None
    """W&B entity of the cloud runs (with --project)"""
    project: Annotated[str | None, flag("PROJECT", "none")] = None
    """W&B project of the cloud runs (with --entity)"""
    run_dir: Annotated[Path | None, flag("RUN_DIR", "none")] = None
    """a harness run dir: its variants and expected seeds, and where each job's W&B run is"""
    refresh: bool = False
    """refetch cloud runs even when cached"""
    cache_dir: Annotated[Path, flag("DIR")] = field(default_factory=cloud.default_cache_dir)
    """where fetched cloud runs are cached"""

    def problem(self) -> str | None:
        """What is wrong with the sources given, for an error message; None when they can be read."""
        if not (self.wandb_dir or self.tensorboard_dir or self.from_results or self.project or self.run_dir):
            return "name a source: --wandb-dir, --tensorboard-dir, --from, --entity/--project or --run-dir"
        if self.project and not self.entity:
            return "--project needs --entity"
        # tensorboard (with grpcio and its data server, ~55 MB) is not in the base install: the module that reads
        # with it is imported only where TensorBoard runs are asked for.
        wants_tensorboard = self.tensorboard_dir or self.run_name_pattern is not None
        if wants_tensorboard and importlib.util.find_spec("tensorboard") is None:
            return ("reading TensorBoard runs (--tensorboard-dir, --run-name-pattern) needs the tensorboard package, "
                    "which the base install leaves out: pip install tensorboard")
        if self.run_name_pattern is not None:
            from benchmark.report import tensorboard

            try:
                tensorboard.run_name_pattern(self.run_name_pattern)
            except ValueError as error:
                return f"--run-name-pattern {error}"
        for item in self.from_results:
            if not _labelled(item)[1].is_file():
                return f"--from {item}: no such file (a results.parquet that `benchmark report` wrote)"
        return None

    def local(self) -> bool:
        """Whether any source is on this machine (not only the W&B cloud)."""
        return bool(self.wandb_dir or self.tensorboard_dir or self.from_results or self.run_dir)


def gather(args: Sources, filters: Filters) -> Found:
    """Every run the sources hold (cloud runs narrowed by `filters` already), matched to the run
    dir's jobs when one is given. A progress bar on stderr while they are read."""
    found = Found()
    manifest = Manifest.load(args.run_dir) if args.run_dir else None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        if manifest and not (args.wandb_dir or args.project):
            # Only the sweep's own runs are decoded from the folders its jobs wrote to.
            files = rundir.run_files(manifest)
        else:
            files, labelled = [], {}
            for item in args.wandb_dir:
                label, directory = _labelled(str(item))
                here = offline.find_run_files(directory)
                if not here:
                    found.warnings.append(f"{directory}: no offline-run-*/run-* folders with a .wandb file")
                files += here
                labelled |= dict.fromkeys(map(str, here), label)
        if files:
            task = progress.add_task("reading W&B runs", total=len(files))
            offline.read_runs(files, found, lambda: progress.advance(task))
            if manifest is None:
                _name_by_source(found.runs, {r.id: labelled.get(r.source) for r in found.runs})
        for item in args.tensorboard_dir:
            from benchmark.report import tensorboard  # optional: see Sources.problem

            label, directory = _labelled(str(item))
            progress.add_task(f"reading TensorBoard runs in {directory}", total=None)
            here = Found()
            tensorboard.read_runs(directory, here, args.run_name_pattern)
            _name_by_source(here.runs, dict.fromkeys((r.id for r in here.runs), label))
            found.warnings += here.warnings
            found.add(here.runs)
        for item in args.from_results:
            label, path = _labelled(item)
            found.add(Results.read(path).to_runs(label, str(path)))
        if args.project and args.entity:
            progress.add_task(f"fetching {args.entity}/{args.project} from W&B", total=None)
            found.add(cloud.fetch_runs(args.entity, args.project, filters, args.cache_dir, args.refresh))
    if manifest:
        found.plan = manifest.plan
        found.runs, found.expected_seeds = rundir.match_jobs(manifest, found.runs)
    return found


def _name_by_source(runs: list[Run], labels: dict[str, str | None]) -> None:
    """Each run of a labelled source as the variant 'VARIANT (LABEL)'."""
    for run in runs:
        if label := labels.get(run.id):
            run.variant = f"{exp_name(run)} ({label})"


def _labelled(item: str) -> tuple[str | None, Path]:
    """`LABEL=PATH` or `PATH` (a path holding `=` is taken whole when it exists)."""
    label, eq, path = item.partition("=")
    if eq and label and not Path(item).exists():
        return label, Path(path)
    return None, Path(item)
