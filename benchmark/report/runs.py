"""What every source hands the report: one `Run` per W&B run, whatever it was read from.

Sources (offline files, the W&B API, a harness run dir) differ in how they find runs; from here on
the report only sees this record, so aggregation and plotting never ask where a run came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

# W&B's own run states. A run that stopped without saying so is "crashed" (W&B's word for a run
# whose heartbeat stopped); "failed" ones exited non-zero. Neither may stand beside finished seeds
# in an average unless the user asks.
FINISHED, RUNNING, CRASHED, FAILED, KILLED = "finished", "running", "crashed", "failed", "killed"
BROKEN_STATES = {CRASHED, FAILED, KILLED}

# Classic TRL (0.4 - 0.11) logs its PPOConfig under this key; our workload does the same.
TRL_CONFIG_KEY = "trl_ppo_trainer_config"


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
    gpu_count: int | None = None
    source: str = ""  # a file or URL, to name the run in warnings
    # Set by the run-dir source: the harness, not W&B, knows which variant and seed a job was.
    variant: str | None = None
    seed: int | None = None

    @property
    def runtime(self) -> float | None:
        """Seconds the run ran, as W&B measured it at its last logged step (or in its summary)."""
        if "_runtime" in self.history and self.history["_runtime"].notna().any():
            return float(self.history["_runtime"].max())
        value = self.summary.get("_runtime")
        return float(value) if isinstance(value, int | float) else None


def config_value(config: dict[str, Any], key: str) -> Any:
    """Look a dotted key up in a run's config, then under the TRL config, so that
    `exp_name` finds classic TRL's `trl_ppo_trainer_config.exp_name` too. None when absent."""
    for path in (key, f"{TRL_CONFIG_KEY}.{key}"):
        node: Any = config
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return node
    return None


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
