"""Gather runs from every source the user named into one list, with the problems met on the way."""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.report import offline
from benchmark.report.runs import Run
from benchmark.report.selection import exp_name

_RUNS_PER_WORKER = 4


@dataclass
class Found:
    runs: list[Run] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # From a harness run dir: the seeds each variant should have.
    expected_seeds: dict[str, list[int]] | None = None

    def add(self, runs: list[Run]) -> None:
        """Add runs, once each: the same run can be reachable from two sources (a synced run)."""
        seen = {run.id for run in self.runs}
        self.runs += [run for run in runs if run.id not in seen]


def from_wandb_dirs(directories: list[Path], found: Found, only_ids: set[str] | None = None) -> None:
    """Read the offline runs in `directories`; with `only_ids`, only runs with those W&B ids."""
    files: list[Path] = []
    for directory in directories:
        here = offline.find_run_files(directory)
        if only_ids is not None:
            here = [path for path in here if path.stem.removeprefix("run-") in only_ids]
        if not here and only_ids is None:
            found.warnings.append(f"{directory}: no offline-run-*/run-* folders with a .wandb file")
        files += here
    # Decoding is CPU-bound Python, so runs are read by one process per core; below a few runs,
    # starting processes costs more than it saves.
    workers = min(os.cpu_count() or 1, len(files) // _RUNS_PER_WORKER)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(offline.read_run, files))
    else:
        results = [offline.read_run(path) for path in files]
    for _, damage in results:
        if damage is not None:
            found.warnings.append(str(damage))
    found.add([run for run, _ in results])


def describe(runs: list[Run]) -> str:
    """What a source holds, for the message when no run matched the filters."""
    if not runs:
        return "the sources hold no runs at all"
    variants = Counter(exp_name(run) for run in runs)
    states = Counter(run.state for run in runs)
    tags = Counter(tag for run in runs for tag in run.tags)
    groups = Counter(run.group for run in runs if run.group)
    parts = [
        f"{len(runs)} runs",
        "exp names: " + ", ".join(f"{k} ({n})" for k, n in variants.most_common()),
        "states: " + ", ".join(f"{k} ({n})" for k, n in states.most_common()),
    ]
    if tags:
        parts.append("tags: " + ", ".join(f"{k} ({n})" for k, n in tags.most_common()))
    if groups:
        parts.append("groups: " + ", ".join(f"{k} ({n})" for k, n in groups.most_common()))
    return "; ".join(parts)
