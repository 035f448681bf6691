"""Which runs a report is about, and which variant each run belongs to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmark.report.runs import Run, config_value, value_matches


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
