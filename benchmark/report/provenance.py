"""What was run, where and when, from the runs table (and a harness plan when there is one): the page's
provenance block.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from benchmark.plan import Plan

# Config entries that differ between every run and say nothing about a variant.
_PER_RUN_KEYS = {"seed", "exp_name", "tracker_project_name", "run_name", "output_dir"}


def provenance(runs: pd.DataFrame, plan: Plan | None, expected: dict[str, list[int]] | None) -> list[tuple[str, str]]:
    """(label, text) rows: each variant's command, the config keys whose values differ between variants, the
    commit, the machine, library versions, dates, and seeds done / expected."""
    rows: list[tuple[str, str]] = []
    variants = list(dict.fromkeys(runs["variant"]))
    planned = {v.name: v for v in plan.variants} if plan else {}
    for variant in variants:
        of_variant = runs[runs["variant"] == variant]
        command = (planned[variant].command if variant in planned
                   else _common(m.get("command") for m in of_variant["meta"]))
        if command:
            rows.append((f"command: {variant}", _without_seed(command)))
    for key, values in config_differences(runs).items():
        rows.append((f"differs: {key}", "; ".join(f"{v}: {values[v]}" for v in variants if v in values)))
    commits = _values(runs, "commit") or ([plan.git_commit] if plan and plan.git_commit else [])
    if commits:
        rows.append(("commit", ", ".join(c[:12] for c in commits)))
    tags = sorted({tag for run_tags in runs["tags"] for tag in (run_tags or [])})
    if tags:  # the harness tags each run with its version (git describe, pr-N) and the user's tags
        rows.append(("tags", ", ".join(tags)))
    refs = [f"{v.name}: {v.ref} ({(v.commit or '')[:12]})" for v in planned.values() if v.ref]
    if refs:
        rows.append(("refs", "; ".join(refs)))
    machine = [", ".join(parts) for parts in {tuple(m.get(k) for k in ("host", "cpu", "gpu") if m.get(k))
                                               for m in runs["meta"]} if parts]
    if machine:
        rows.append(("machine", "; ".join(sorted(machine))))
    for key in ("os", "python", "cuda"):
        if found := _values(runs, key):
            rows.append((key, ", ".join(found)))
    libraries: dict[str, set[str]] = {}
    for meta in runs["meta"]:
        for name, version in (meta.get("libraries") or {}).items():
            libraries.setdefault(name, set()).add(version)
    if libraries:
        rows.append(("libraries", ", ".join(f"{n} {'/'.join(sorted(v))}" for n, v in libraries.items())))
    started = sorted(m["started"] for m in runs["meta"] if m.get("started"))
    if started:
        rows.append(("dates", started[0] if len(started) == 1 else f"{started[0]} to {started[-1]} (runs started)"))
    for variant in variants:
        of_variant = runs[runs["variant"] == variant]
        done = int((of_variant["state"] == "finished").sum())
        wanted = len(expected[variant]) if expected and variant in expected else len(of_variant)
        seeds = sorted(int(s) for s in of_variant["seed"] if s is not None and not pd.isna(s))
        listed = f" (seeds {_ranges(seeds)})" if seeds else ""
        rows.append((f"seeds: {variant}", f"{done} / {wanted} finished{listed}"))
    return rows


def config_differences(runs: pd.DataFrame) -> dict[str, dict[str, str]]:
    """key -> variant -> value, for the config keys whose value is one per variant but not the same for all."""
    per_variant: dict[str, dict[str, set[str]]] = {}
    for variant, config in zip(runs["variant"], runs["config"], strict=True):
        for key, value in _flat(config or {}).items():
            if key.rsplit(".", 1)[-1] not in _PER_RUN_KEYS:
                per_variant.setdefault(key, {}).setdefault(variant, set()).add(value)
    variants = set(runs["variant"])
    differing = {}
    for key, values in per_variant.items():
        one_each = {v: next(iter(s)) for v, s in values.items() if len(s) == 1}
        if len(one_each) == len(values) and (len(set(one_each.values())) > 1 or set(values) != variants):
            differing[key] = {v: one_each.get(v, "(not set)") for v in variants} | one_each
    return differing


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def _values(runs: pd.DataFrame, key: str) -> list[str]:
    return sorted({str(m[key]) for m in runs["meta"] if m.get(key)})


def _common(commands: Iterable[str | None]) -> str | None:
    """The command the runs share once their seeds are left out; the first one if they differ."""
    found = [_without_seed(c) for c in commands if c]
    return found[0] if found else None


def _without_seed(command: str) -> str:
    return re.sub(r"\s--seed[ =]\S+", "", command)


def _ranges(seeds: list[int]) -> str:
    """1, 2, 3, 5 -> 1-3, 5."""
    parts, start = [], None
    for i, seed in enumerate(seeds):
        start = seed if start is None else start
        if i + 1 == len(seeds) or seeds[i + 1] != seed + 1:
            parts.append(str(seed) if start == seed else f"{start}-{seed}")
            start = None
    return ", ".join(parts)
