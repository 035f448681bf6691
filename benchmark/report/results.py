"""One tidy table of results, in benchopt's manner: every figure, table and verdict of a report reads it.

    points: one row per run, metric and step: run, variant, seed, metric, step, value
    runs:   one row per run: run, variant, seed, label, state, name, group, tags, config, meta, ...

Whatever the source (offline W&B files, the W&B API, TensorBoard, a harness run dir, an earlier
results.parquet), the report turns the runs it chose into these two tables once, and computes from them.
The x-axes other than the step are stored as metrics of their own: `_runtime` (wall time, as W&B
logs it), `_samples` and `_tokens` (cumulative rollouts and response tokens; see `x_axes`).

`results.parquet` is the points table with the runs table in the file's metadata: one file to commit
beside a page, and to read back with `benchmark report --from`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from benchmark import workload
from benchmark.report.aggregate import Series, clean_series, final_value
from benchmark.report.runs import Run, config_value, sorted_by_step

# The x-axes a report offers, by the name stored in the table, and their names on the page.
X_AXES = {"_step": "step", "_samples": "samples", "_tokens": "tokens", "_runtime": "wall time (s)"}
_RUNS_KEY = b"benchmark.runs"
_RUN_FIELDS = ("run", "variant", "seed", "state", "name", "group", "tags", "project", "entity", "source",
               "gpu_count", "config", "meta")


@dataclass
class Results:
    points: pd.DataFrame
    runs: pd.DataFrame
    # series() by its arguments, with the points they were read from: a report asks for the same ones again and
    # again (figures, comparisons, page, verdicts, table). The tables are not to be changed in place.
    _series: dict[tuple[str, str, int], tuple[pd.DataFrame, dict[str, list[Series]]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def of(cls, groups: dict[str, list[Run]], metrics: Iterable[str]) -> Results:
        """The runs of each variant, their `metrics` and every x-axis, as the two tables."""
        wanted = list(dict.fromkeys([*metrics, *X_AXES]))
        parts: list[tuple[str, str, int | None, str, np.ndarray, np.ndarray]] = []
        rows = []
        for variant, runs in groups.items():
            for run in runs:
                rows.append(_run_row(run, variant))
                columns = {**{m: run.history[m] for m in wanted if m in run.history}, **x_axes(run)}
                steps = run.history["_step"].to_numpy(dtype=np.int64) if "_step" in run.history else np.zeros(0)
                for metric in wanted:
                    if metric == "_step" or metric not in columns:
                        continue
                    values = pd.to_numeric(columns[metric], errors="coerce").to_numpy(dtype=float)
                    logged = ~np.isnan(values)
                    if logged.any():
                        parts.append((run.id, variant, seed_of(run), metric, steps[logged], values[logged]))
        return cls(_points(parts), pd.DataFrame(rows, columns=list(_RUN_FIELDS)))

    def series(self, metric: str, x_axis: str = "_step", smooth: int = 1) -> dict[str, list[Series]]:
        """Each variant's runs' `metric` against `x_axis` (a step, or another metric logged at the same steps)."""
        points, found = self._series.get((metric, x_axis, smooth), (None, {}))
        if points is not self.points:
            found = self._series_of(metric, x_axis, smooth)
            self._series[metric, x_axis, smooth] = (self.points, found)
        return {variant: list(group) for variant, group in found.items()}

    def _series_of(self, metric: str, x_axis: str, smooth: int) -> dict[str, list[Series]]:
        chosen = self.points[self.points["metric"] == metric]
        if x_axis != "_step":
            x = self.points[self.points["metric"] == x_axis][["run", "step", "value"]].rename(columns={"value": "x"})
            chosen = chosen.merge(x, on=["run", "step"], how="inner")
        else:
            chosen = chosen.assign(x=chosen["step"].astype(float))
        # As chosen.groupby(["variant", "run"], observed=True, sort=False), without a DataFrame per run: each
        # (variant, run) in the order it first occurs, its rows in their order; rows lacking either are left out.
        variants, variant_names = pd.factorize(chosen["variant"])
        runs, run_names = pd.factorize(chosen["run"])
        keyed = (variants >= 0) & (runs >= 0)
        pairs, _ = pd.factorize(variants[keyed].astype(np.int64) * len(run_names) + runs[keyed])
        counts = np.bincount(pairs)
        ends = np.cumsum(counts)
        rows = np.flatnonzero(keyed)[np.argsort(pairs, kind="stable")]  # chosen's rows, group after group
        xs, ys = chosen["x"].to_numpy(dtype=float)[rows], chosen["value"].to_numpy(dtype=float)[rows]
        found: dict[str, list[Series]] = {}
        for start, end in zip(ends - counts, ends, strict=True):
            row = rows[start]
            s = clean_series(str(run_names[runs[row]]), xs[start:end], ys[start:end], smooth)
            if s is not None:
                found.setdefault(str(variant_names[variants[row]]), []).append(s)
        return found

    def finals(self, metric: str, last_n: int) -> dict[str, np.ndarray]:
        """Each variant's runs' final values of `metric`: a run's mean over its last `last_n` logged steps."""
        return {variant: np.array([final_value(s, last_n) for s in found])
                for variant, found in self.series(metric).items()}

    def per_run(self, metric: str, how: str) -> dict[str, float]:
        """Each run's `metric` reduced over its steps (`how`: a pandas reduction, e.g. "max", "mean", "count")."""
        chosen = self.points[self.points["metric"] == metric]
        return {str(k): float(v) for k, v in chosen.groupby("run", observed=True)["value"].agg(how).items()}

    def only(self, runs: Iterable[str]) -> Results:
        """The table of these runs alone."""
        keep = set(runs)
        return Results(self.points[self.points["run"].isin(keep)], self.runs[self.runs["run"].isin(keep)])

    def write(self, path: Path) -> None:
        table = pa.Table.from_pandas(self.points, preserve_index=False)
        runs = json.dumps(self.runs.to_dict(orient="records"), default=str).encode()
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _RUNS_KEY: runs})
        pq.write_table(table, path, compression="zstd")

    @classmethod
    def read(cls, path: Path) -> Results:
        table = pq.read_table(path)
        metadata = table.schema.metadata or {}
        if _RUNS_KEY not in metadata:
            raise ValueError(f"{path}: not a results.parquet written by `benchmark report` (no run table)")
        runs = pd.DataFrame(json.loads(metadata[_RUNS_KEY]), columns=list(_RUN_FIELDS))
        return cls(table.to_pandas(), runs)

    def to_runs(self, label: str | None, source: str) -> list[Run]:
        """The runs again, so that an earlier report's results are one more source; with a label, each variant
        is named `variant (label)`, so that two sources' same variant stay apart."""
        histories = {
            str(run): sorted_by_step(frame.pivot_table(index="step", columns="metric", values="value",
                                                       observed=True, aggfunc="last")
                                     .rename_axis(columns=None).reset_index().rename(columns={"step": "_step"}))
            for run, frame in self.points.groupby("run", observed=True)
        }
        runs, empty = [], sorted_by_step(pd.DataFrame())
        for row in self.runs.to_dict(orient="records"):
            variant = f"{row['variant']} ({label})" if label else row["variant"]
            seed = None if row["seed"] is None or pd.isna(row["seed"]) else int(row["seed"])
            runs.append(Run(
                id=f"{label}:{row['run']}" if label else row["run"], name=row["name"], state=row["state"],
                config=row["config"] or {}, summary={}, history=histories.get(row["run"], empty),
                project=row["project"] or "", entity=row["entity"] or "", group=row["group"] or "",
                tags=list(row["tags"] or []), gpu_count=row["gpu_count"], source=f"{source} ({row['source']})",
                variant=variant, seed=seed, meta=row["meta"] or {},
            ))
        return runs


def x_axes(run: Run) -> dict[str, pd.Series]:
    """The cumulative x-axes of a run's history rows: what it logged (trl_ppo logs both counters), else what its
    config and per-step lengths give for one process: rollouts = (step + 1) x batch_size, response tokens the
    running sum of batch_size x the mean response length."""
    history, axes = run.history, {}
    batch = config_value(run.config, workload.BATCH_SIZE_KEY)
    batch = batch if isinstance(batch, int) and not isinstance(batch, bool) else None
    if workload.SAMPLES_COUNTER in history:
        axes["_samples"] = history[workload.SAMPLES_COUNTER]
    elif batch and "_step" in history:
        axes["_samples"] = (history["_step"] + 1) * float(batch)
    if workload.TOKENS_COUNTER in history:
        axes["_tokens"] = history[workload.TOKENS_COUNTER]
    elif batch and workload.RESPONSE_LENGTH in history:
        axes["_tokens"] = (history[workload.RESPONSE_LENGTH].fillna(0) * batch).cumsum()
    return axes


def seed_of(run: Run) -> int | None:
    """The run's seed: the harness's, else the one in its config."""
    if run.seed is not None:
        return run.seed
    seed = config_value(run.config, workload.SEED_KEY)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _points(parts: list[tuple[str, str, int | None, str, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """The long table from each (run, variant, seed, metric)'s steps and values, built column-wise: a
    report of 400 runs x 1,000 steps is a few million rows."""
    lengths = [len(p[4]) for p in parts]

    def repeated(i: int) -> pd.Categorical:
        labels = [p[i] for p in parts]
        categories = list(dict.fromkeys(labels))
        codes = np.repeat(np.array([categories.index(v) for v in labels], dtype=np.int32), lengths)
        return pd.Categorical.from_codes(codes, categories=categories)

    seeds = np.repeat(np.array([np.nan if p[2] is None else p[2] for p in parts], dtype=float), lengths)
    return pd.DataFrame({
        "run": repeated(0) if parts else pd.Categorical([]),
        "variant": repeated(1) if parts else pd.Categorical([]),
        "seed": pd.Series(seeds).astype("Int64"),  # NaN (no seed known) becomes <NA>
        "metric": repeated(3) if parts else pd.Categorical([]),
        "step": np.concatenate([p[4] for p in parts]) if parts else np.zeros(0, dtype=np.int64),
        "value": np.concatenate([p[5] for p in parts]) if parts else np.zeros(0),
    })


def _run_row(run: Run, variant: str) -> dict[str, Any]:
    return {
        "run": run.id, "variant": variant, "seed": seed_of(run), "state": run.state, "name": run.name,
        "group": run.group, "tags": list(run.tags), "project": run.project, "entity": run.entity,
        "source": run.source, "gpu_count": run.gpu_count, "config": run.config, "meta": run.meta,
    }
