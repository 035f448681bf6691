"""Runs, whatever they were read from, and which of them a report is about.

Every source (offline files, the W&B API, a harness run dir) hands the report one `Run` per W&B run;
from here on the report only sees this record, so aggregation and plotting never ask where a run
came from. Also here: what the sources gathered (`Found`), the user's filters, and the grouping of
runs into variants.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from benchmark import workload

if TYPE_CHECKING:
    from benchmark.plan import Plan

# W&B's own run states. A run that stopped without saying so is "crashed" (W&B's word for a run
# whose heartbeat stopped); "failed" ones exited non-zero. Neither may stand beside finished seeds
# in an average unless the user asks.
FINISHED, RUNNING, CRASHED, FAILED, KILLED = "finished", "running", "crashed", "failed", "killed"
BROKEN_STATES = {CRASHED, FAILED, KILLED}


@dataclass
class Run:
    id: str
    name: str
    state: str
    config: dict[str, Any]
    summary: Mapping[str, Any]
    # One row per logged step, numeric columns only (histograms and text are not curves).
    history: pd.DataFrame
    project: str = ""
    entity: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    user: str = ""  # the W&B user who logged it: known for cloud runs only (offline files do not say)
    gpu_count: int | None = None
    source: str = ""  # a file or URL, to name the run in warnings
    # Set by the run-dir source (the harness, not W&B, knows which variant and seed a job was) and by the
    # TensorBoard source (from the run folder's name).
    variant: str | None = None
    seed: int | None = None
    # Where and how it ran, as W&B recorded it: host, os, python, cpu, gpu, cuda, started, commit, command,
    # libraries (name -> version), samples (a few (query, response, reward) of its game log); what a source
    # knows, for the report's provenance block.
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> float | None:
        """Seconds the run ran, as W&B measured it at its last logged step (or in its summary)."""
        if "_runtime" in self.history and self.history["_runtime"].notna().any():
            return float(self.history["_runtime"].max())
        value = self.summary.get("_runtime")
        return float(value) if isinstance(value, int | float) else None


@dataclass
class Found:
    """What the sources gathered: the runs, the problems met on the way, and (from a harness run
    dir) its plan and the seeds each variant should have."""

    runs: list[Run] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plan: Plan | None = None
    expected_seeds: dict[str, list[int]] | None = None

    def add(self, runs: list[Run]) -> None:
        """Add runs, once each: the same run can be reachable from two sources (a synced run)."""
        seen = {run.id for run in self.runs}
        self.runs += [run for run in runs if run.id not in seen]


@dataclass
class Filters:
    """What the user asked for; a source may apply them early, `keep` always applies them."""

    tags: list[str] = field(default_factory=list)
    group: str | None = None
    state: str | None = None
    config: dict[str, str] = field(default_factory=dict)  # dotted key -> value as typed

    def keep(self, run: Run) -> bool:
        return (
            all(tag in run.tags for tag in self.tags)
            and (self.group is None or run.group == self.group)
            and (self.state is None or run.state == self.state)
            and all(value_matches(config_value(run.config, k), v) for k, v in self.config.items())
        )

    def describe(self) -> str:
        parts = [f"tag={t}" for t in self.tags]
        parts += [f"group={self.group}"] if self.group else []
        parts += [f"state={self.state}"] if self.state else []
        parts += [f"{k}={v}" for k, v in self.config.items()]
        return ", ".join(parts) or "none"


def config_value(config: dict[str, Any], key: str) -> Any:
    """Look a dotted key up in a run's config, then under the workload's config key, so that
    `exp_name` finds classic TRL's `trl_ppo_trainer_config.exp_name` too. None when absent.

    Each is tried as given, then without its `value` levels: W&B's raw config wraps every entry
    as `{"value": ...}`, so keys written for its API (openrlbenchmark's
    `trl_ppo_trainer_config.value.reward_model`) find the plain configs every source hands us."""
    paths = (key, plain_key(key), f"{workload.CONFIG_KEY}.{key}", f"{workload.CONFIG_KEY}.{plain_key(key)}")
    for path in dict.fromkeys(paths):  # in order, once each
        node: Any = config
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return node
    return None


def plain_key(key: str) -> str:
    """A dotted config key without W&B's raw-form `value` levels (a leading `value` is a real key)."""
    first, *rest = key.split(".")
    return ".".join([first, *(part for part in rest if part != "value")])


def value_matches(actual: Any, wanted: str) -> bool:
    """`--filter KEY=VALUE` compares as the user typed it: `1`, `true` and `gpt2` all match."""
    if actual is None:
        return False
    if str(actual) == wanted:
        return True
    try:
        return json.loads(wanted) == actual
    except json.JSONDecodeError:
        return False


def parse_assignments(items: list[str], flag: str) -> dict[str, str]:
    """`KEY=VALUE` items of a repeatable flag -> dict; the message names the flag when one is wrong."""
    pairs = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def exp_name(run: Run) -> str:
    """The default variant of a run: what the harness knows, else TRL's `exp_name`, else W&B's
    group, else the run's own name."""
    return run.variant or str(config_value(run.config, "exp_name") or run.group or run.name)


def key_of(group_by: str | None) -> Callable[[Run], str]:
    """The variant of a run: its exp name by default, else the value of a config key."""
    if group_by is None:
        return exp_name
    return lambda run: f"{group_by}={config_value(run.config, group_by)}"


def group_runs(runs: list[Run], key: Callable[[Run], str], labels: dict[str, str]) -> dict[str, list[Run]]:
    """Runs by variant, in the order their variants first appear, with `--labels` applied."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        name = key(run)
        groups.setdefault(labels.get(name, name), []).append(run)
    return groups


def describe(runs: list[Run]) -> str:
    """What the sources hold, for the message when no run matched the filters."""
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


def history_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    """Logged rows of numbers -> a frame sorted by `_step`."""
    return sorted_by_step(pd.DataFrame.from_records(rows) if rows else pd.DataFrame())


def sorted_by_step(frame: pd.DataFrame) -> pd.DataFrame:
    """A history frame in step order, `_step` as integers (W&B numbers rows from 0 if it is absent)."""
    if "_step" not in frame:
        frame["_step"] = pd.Series(range(len(frame)), dtype="int64")
    frame["_step"] = frame["_step"].astype("int64")
    return frame.sort_values("_step", kind="stable").reset_index(drop=True)


def numbers_only(row: dict[str, Any]) -> dict[str, float]:
    """Histograms, text and flags are not curves; leaving them out keeps every column a float."""
    return {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
