"""The table: per variant, seeds done / expected and end results, from the results table; written as md, csv
and on the terminal (the page shows it too)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from benchmark import workload
from benchmark.report.aggregate import Estimate, mean_ci95
from benchmark.report.results import Results
from benchmark.report.runs import BROKEN_STATES, FINISHED, RUNNING

# The csv's names for the default metrics, as reports have always written them; the columns of
# any other metric are named after it.
_CSV_NAMES = {workload.REWARD: "reward", workload.KL: "kl"}


@dataclass
class Row:
    variant: str
    done: int
    expected: int
    running: int
    broken: int  # crashed, failed or killed
    broken_included: bool
    missing: list[int] = field(default_factory=list)  # expected seeds that never produced a run
    finals: dict[str, Estimate] = field(default_factory=dict)  # metric -> final value, in --metrics order
    runtime_s: float | None = None  # mean over the runs used
    samples_per_s: float | None = None  # mean over the runs used
    gpu_hours: float | None = None  # total over the runs used

    def notes(self) -> str:
        notes = []
        if self.broken:
            verb = "included" if self.broken_included else "excluded"
            notes.append(f"{self.broken} crashed/failed {verb}")
        if self.running:
            notes.append(f"{self.running} still running")
        if self.missing:
            notes.append("missing seeds " + ", ".join(map(str, self.missing)))
        return "; ".join(notes)

    def cells(self) -> list[str]:
        """The row as displayed, the same in markdown, html and on the terminal."""
        return [
            self.variant,
            f"{self.done} / {self.expected}",
            *map(str, self.finals.values()),
            _duration(self.runtime_s),
            _number(self.samples_per_s),
            _number(self.gpu_hours),
            self.notes(),
        ]

    def sort_values(self) -> list[float | str | None]:
        """What sorting the page's table by each column of `cells` uses."""
        return [self.variant, self.done, *(e.mean if e.n else None for e in self.finals.values()), self.runtime_s,
                self.samples_per_s, self.gpu_hours, self.notes()]

    def record(self) -> dict[str, object]:
        """The row as data, for the csv: full precision, empty where unknown."""
        return {
            "variant": self.variant,
            "seeds_done": self.done,
            "seeds_expected": self.expected,
            "seeds_running": self.running,
            "seeds_crashed": self.broken,
            "crashed_included": self.broken_included,
            "missing_seeds": " ".join(map(str, self.missing)),
            **{
                f"{_CSV_NAMES.get(metric, metric)}_{part}": value
                for metric, final in self.finals.items()
                for part, value in (("mean", _blank(final.mean)), ("ci95", _blank(final.ci95)), ("n", final.n))
            },
            "runtime_s": _blank(self.runtime_s),
            "samples_per_s": _blank(self.samples_per_s),
            "gpu_hours": _blank(self.gpu_hours),
        }


def headers(metrics: Sequence[str]) -> list[str]:
    """The columns as displayed: a final value per metric."""
    finals = [f"final {metric}" for metric in metrics]
    return ["variant", "seeds done/expected", *finals, "runtime", "samples/s", "GPU-hours", "notes"]


def rows_of(
    table: Results, metrics: Sequence[str], last_n: int, expected: dict[str, list[int]], include_crashed: bool
) -> list[Row]:
    """A row per variant of the table (and per expected variant none of whose jobs started): its runs' states
    and seeds, and the final values, runtime and throughput of the runs that are averaged (crashed and failed
    ones only when asked for)."""
    runs = table.runs
    used = runs if include_crashed else runs[~runs["state"].isin(BROKEN_STATES)]
    averaged = table.only(used["run"])
    finals = {metric: averaged.finals(metric, last_n) for metric in metrics}
    runtime = averaged.per_run("_runtime", "max")
    logged_rate = averaged.per_run(workload.SAMPLES_PER_S, "mean")
    steps = averaged.per_run("_samples", "count")
    samples = averaged.per_run("_samples", "max")
    rows = []
    for variant in list(dict.fromkeys([*runs["variant"], *expected])):
        mine, mine_used = runs[runs["variant"] == variant], used[used["variant"] == variant]
        seen = {int(s) for s in mine["seed"] if s is not None and not pd.isna(s)}
        ids = list(mine_used["run"])
        times = [runtime[i] for i in ids if i in runtime]
        # Samples per second: as logged per step, else all rollouts / runtime (classic TRL logs no rate).
        rates = [logged_rate.get(i) or (samples[i] / runtime[i] if steps.get(i) and runtime.get(i) else None)
                 for i in ids]
        gpu_hours = [g * runtime[i] / 3600 for i, g in zip(ids, mine_used["gpu_count"], strict=True)
                     if g and not pd.isna(g) and i in runtime]
        rows.append(Row(
            variant=variant,
            done=int((mine["state"] == FINISHED).sum()),
            expected=len(expected[variant]) if variant in expected else len(mine),
            running=int((mine["state"] == RUNNING).sum()),
            broken=int(mine["state"].isin(BROKEN_STATES).sum()),
            broken_included=include_crashed,
            missing=[s for s in expected.get(variant, []) if s not in seen],
            finals={m: mean_ci95(list(finals[m].get(variant, []))) for m in metrics},
            runtime_s=_mean(times),
            samples_per_s=_mean(rates),
            gpu_hours=_total(gpu_hours),
        ))
    return rows


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _total(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _blank(value: float | None) -> float | str:
    return "" if value is None or value != value else value  # value != value: NaN


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def write_markdown(
    rows: list[Row], metrics: Sequence[str], path: Path, last_n: int, title: str = "", finding: str = "",
    findings: Sequence[str] = (), figures: Sequence[str] = (), asset_url: str | None = None,
) -> None:
    """summary.md, ready for a README or a PR comment: the title, the finding, the verdicts, the figures (from
    `asset_url` where the folder is uploaded, else named: GitHub shows no file beside a comment), the table."""
    columns = headers(metrics)
    lines = [f"## {title}", ""] if title else []
    lines += [finding, ""] if finding else []
    lines += [f"- {line}" for line in findings] + ([""] if findings else [])
    if asset_url:
        lines += [f"![{name}]({asset_url.rstrip('/')}/{name})" for name in figures] + [""]
    elif figures:
        lines += ["Figures beside this file: " + ", ".join(f"`{name}`" for name in figures) + " (and index.html).", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row.cells()) + " |" for row in rows]
    path.write_text("\n".join(lines + ["", footnote(last_n)]) + "\n")


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].record()) if rows else ["variant"])
        writer.writeheader()
        writer.writerows(row.record() for row in rows)


def print_table(rows: list[Row], metrics: Sequence[str], console: Console) -> None:
    table = Table(title="Benchmark summary")
    for i, header in enumerate(headers(metrics)):
        # Variant names are what the reader looks for: never cut; other columns wrap instead.
        table.add_column(header, no_wrap=i == 0)
    for row in rows:
        table.add_row(*row.cells())
    console.print(table)


def footnote(last_n: int) -> str:
    return (
        f"Final values: each run's mean over its last {last_n} logged steps, then mean ± Student-t 95% "
        "CI over seeds. Runtime and samples/s: mean over runs (samples/s as logged in "
        f"{workload.SAMPLES_PER_S}, else steps x batch size / runtime); GPU-hours: total over runs."
    )
