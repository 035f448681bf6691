"""The table: per variant, seeds done / expected and end results; written as md, csv, html, terminal."""

from __future__ import annotations

import csv
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmark import workload
from benchmark.report.aggregate import Estimate, final_value, mean_ci95, series
from benchmark.report.runs import BROKEN_STATES, FINISHED, RUNNING, Run, config_value

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


def summarize(
    variant: str,
    runs: list[Run],
    used: list[Run],
    metrics: Sequence[str],
    last_n: int,
    expected_seeds: list[int] | None = None,
    include_crashed: bool = False,
) -> Row:
    """One variant's row. `runs` is everything found for it, `used` the runs that are averaged."""
    seen = {run.seed for run in runs}
    return Row(
        variant=variant,
        done=sum(run.state == FINISHED for run in runs),
        expected=len(expected_seeds) if expected_seeds is not None else len(runs),
        running=sum(run.state == RUNNING for run in runs),
        broken=sum(run.state in BROKEN_STATES for run in runs),
        broken_included=include_crashed,
        missing=[s for s in expected_seeds or [] if s not in seen],
        finals={metric: _final(used, metric, last_n) for metric in metrics},
        runtime_s=_mean([run.runtime for run in used]),
        samples_per_s=_mean([_samples_per_s(run) for run in used]),
        gpu_hours=_total([_gpu_hours(run) for run in used]),
    )


def _final(runs: list[Run], metric: str, last_n: int) -> Estimate:
    values = [final_value(s, last_n) for run in runs if (s := series(run, metric, "_step")) is not None]
    return mean_ci95(values)


def _samples_per_s(run: Run) -> float | None:
    """Queries per second: the mean of what the run logged per step under `workload.SAMPLES_PER_S`
    (our workload does), else, for classic TRL runs, PPO steps x batch size / runtime."""
    logged = workload.SAMPLES_PER_S
    if logged in run.history and run.history[logged].notna().any():
        return float(run.history[logged].mean())
    batch_size = config_value(run.config, "batch_size")
    if not isinstance(batch_size, int) or not run.runtime or run.history.empty:
        return None
    steps = int(run.history["_step"].max()) + 1
    return steps * batch_size / run.runtime


def _gpu_hours(run: Run) -> float | None:
    if not run.gpu_count or run.runtime is None:
        return None
    return run.gpu_count * run.runtime / 3600


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


def write_markdown(rows: list[Row], metrics: Sequence[str], path: Path, last_n: int) -> None:
    columns = headers(metrics)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row.cells()) + " |" for row in rows]
    path.write_text("\n".join(lines + ["", _footnote(last_n)]) + "\n")


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].record()) if rows else ["variant"])
        writer.writeheader()
        writer.writerows(row.record() for row in rows)


def write_html(
    rows: list[Row], metrics: Sequence[str], figures: list[Path], warnings: list[str], path: Path, last_n: int,
    verdicts: Sequence[str] = (),
) -> None:
    """A self-contained page beside the figures: they are linked by relative name. `verdicts`: the lines of a
    `benchmark compare` written to the same folder, shown first."""
    esc = html.escape
    verdict = "".join(f"<li>{esc(line).replace('**', '')}</li>" for line in verdicts)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers(metrics))
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row.cells()) + "</tr>" for row in rows)
    images = "".join(
        f'<figure><img src="{esc(f.name)}" alt="{esc(f.stem)}"><figcaption>{esc(f.stem)}</figcaption></figure>'
        for f in figures
    )
    notes = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    path.write_text(
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>Benchmark report</title><style>"
        "body{font-family:sans-serif;margin:2em;background:#fff;color:#222}"
        "img{max-width:100%}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#eef}"
        "</style></head><body><h1>Benchmark report</h1>"
        + (f'<h2>Verdict (<a href="compare.md">compare.md</a>)</h2><ul>{verdict}</ul>' if verdict else "")
        + f"{images}<h2>Summary</h2><table><tr>{head}</tr>{body}</table><p>{esc(_footnote(last_n))}</p>"
        + (f"<h2>Warnings</h2><ul>{notes}</ul>" if notes else "")
        + "</body></html>\n"
    )


def print_table(rows: list[Row], metrics: Sequence[str], console: Console) -> None:
    table = Table(title="Benchmark summary")
    for i, header in enumerate(headers(metrics)):
        # Variant names are what the reader looks for: never cut; other columns wrap instead.
        table.add_column(header, no_wrap=i == 0)
    for row in rows:
        table.add_row(*row.cells())
    console.print(table)


def _footnote(last_n: int) -> str:
    return (
        f"Final values: each run's mean over its last {last_n} logged steps, then mean ± Student-t 95% "
        "CI over seeds. Runtime and samples/s: mean over runs (samples/s as logged in "
        f"{workload.SAMPLES_PER_S}, else steps x batch size / runtime); GPU-hours: total over runs."
    )
