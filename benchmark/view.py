"""What the user sees: a rich live view on a terminal, plain one-line events elsewhere, status tables."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import tyro

from benchmark.manifest import ACTIVE_STATES, COMPLETED, PENDING, QUEUED, RUNNING, JobRecord, Record
from benchmark.redact import Redactor

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.live import Live

# rich is imported only where it is used: on a terminal, and for tables. A sweep launched off a
# terminal (CI, scripts, benchmarks) prints plain lines and is spared rich's import, a sixth of
# its start-up time.
ON_TERMINAL = sys.stdout.isatty()
_STATE_STYLE = {COMPLETED: "green", RUNNING: "cyan", PENDING: "dim"}
_LOG_TAIL_LINES = 15


Args = TypeVar("Args")
# tyro's markers for the command lines: a flag given once per value, and a group of --help whose flags keep their
# own names (no `--group.` prefix).
Repeatable = tyro.conf.UseAppendAction
Group = tyro.conf.OmitArgPrefixes


def flag(metavar: str | None = None, unset: str | None = None) -> object:
    """A flag's metavar, and what happens when it is not given (instead of tyro's "(default: None)")."""
    return tyro.conf.arg(metavar=metavar, help_behavior_hint=f"(unset: {unset})" if unset else None)


def _join_lines(text: str, _join: Callable[[str], str] = tyro._strings.remove_single_line_breaks) -> str:
    return _join(tyro._strings.dedent(text))


# tyro (1.0) joins a help text's lines where the next one starts with a letter, and dedents a field's docstring only
# after that: the indented continuation lines of every multi-line docstring stayed hard breaks, ragged at any width.
tyro._strings.remove_single_line_breaks = _join_lines


def parse_args(cls: type[Args], argv: list[str], prog: str, examples: str, description: str | None = None) -> Args:
    """tyro's parse of a command line; its --help starts with `description` (by default the class's docstring, one
    paragraph) and ends with `examples` (tyro has no epilog of its own)."""
    description = description or " ".join((cls.__doc__ or "").split())
    try:
        return tyro.cli(cls, args=argv, prog=prog, description=description)
    except SystemExit as stop:
        if stop.code == 0 and not {"-h", "--help"}.isdisjoint(argv):
            print(f"\nexamples:\n{examples.rstrip()}", flush=True)
        raise


@functools.cache
def rich_console() -> Console:
    from rich.console import Console

    # Off a terminal rich would squeeze tables into 80 columns and cut the log paths.
    return Console(highlight=False, soft_wrap=True, width=None if ON_TERMINAL else 320)


def say(message: object, style: str | None = None) -> None:
    """Print a line (or a rich table) on stdout; text is never read as rich markup."""
    if ON_TERMINAL or not isinstance(message, str):
        rich_console().print(message, markup=False, style=style)
    else:
        print(message, flush=True)


def say_error(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def say_note(line: str) -> None:
    """A scheduler's line for the user: warnings and errors on stderr, the rest on stdout."""
    (say_error if line.startswith(("warning:", "error:")) else say)(line)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _style(state: str) -> str:
    return _STATE_STYLE.get(state, "yellow" if state in ACTIVE_STATES else "red")


class SweepView:
    """Counts, elapsed time and ETA of a sweep while it runs, and one line per event."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.redactor = Redactor()
        self.started = time.time()
        self.live: Live | None = None
        if ON_TERMINAL:
            from rich.live import Live

            self.live = Live(self, console=rich_console(), refresh_per_second=4)

    def __enter__(self) -> SweepView:
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.stop()

    def event(self, record: Record, what: str, notable: bool = False) -> None:
        """One line per event off a terminal (CI logs); on a terminal the live view shows the routine
        ones, and only notable events (failures, retries) are printed above it."""
        if self.live and not notable:
            return
        say(f"{time.strftime('%H:%M:%S')} {record.id} {self.redactor.text(what)}")

    def counts(self) -> Counter[str]:
        return Counter(r.state for r in self.records)

    def __rich__(self) -> Group:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        counts = self.counts()
        total, done = len(self.records), sum(n for s, n in counts.items() if s not in ACTIVE_STATES)
        elapsed = time.time() - self.started
        eta = elapsed / done * (total - done) if done else None
        summary = Text.assemble(
            (f"done {counts[COMPLETED]}", "green"), "  ",
            (f"running {counts[RUNNING]}", "cyan"), "  ",
            (f"failed {done - counts[COMPLETED]}", "red"), "  ",
            (f"pending {counts[PENDING] + counts[QUEUED]}", "dim"),
            f"   {done}/{total}  elapsed {_duration(elapsed)}",
            f"  eta {_duration(eta)}" if eta is not None else "",
        )
        running = Table.grid(padding=(0, 2))
        for record in self.records:
            if record.state == RUNNING:
                gpu = f"gpu {record.gpus}" if isinstance(record, JobRecord) and record.gpus else ""
                running.add_row(record.id, _duration(record.duration), gpu)
        return Group(summary, running)


# `benchmark status`: plain aligned text, on a terminal too. rich's Table drew 10,000 rows in 6.5 s
# (its per-cell measuring, wrapping and padding); these lines take 0.07 s. Only states are coloured.
STATUS_ROWS = 50  # jobs listed by default; `--all` lists every one
_COLUMNS = ("variant", "seed", "state", "exit", "duration", "tries", "job id", "node", "log", "W&B run")
_RIGHT = {1, 3, 4, 5}  # seed, exit, duration, tries
_ANSI = {"green": "32", "cyan": "36", "dim": "2", "yellow": "33", "red": "31"}


def status_table(records: list[Record], run_dir: Path, every_job: bool = False, limit: int = STATUS_ROWS) -> str:
    """What `benchmark status` prints: counts per variant and state, then the jobs not COMPLETED (at
    most `limit` of them, failures first) or, with `every_job`, every job; then the jobs' messages."""
    color = ON_TERMINAL and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    counts = Counter(r.state for r in records)
    title = f"{run_dir}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    parts = ["\n".join([title, *_counts_table(records, sorted(counts), color)])]
    if every_job:
        shown, more = records, 0
    else:
        # Failures first, then running jobs, then waiting ones: what is cut off is what matters least.
        rank = {state: 0 if state not in ACTIVE_STATES else 1 if state == RUNNING else 2 for state in counts}
        jobs = [r for r in records if isinstance(r, JobRecord) and r.state != COMPLETED]
        jobs.sort(key=lambda r: rank[r.state])
        shown, more = jobs[:limit], max(0, len(jobs) - limit)
        shown += [r for r in records if not isinstance(r, JobRecord)]  # the follow-up job, always
    if shown:
        base = str(run_dir)
        rows = [_COLUMNS, *(_job_row(r, base) for r in shown)]
        lines = _aligned(rows, _RIGHT, (lambda row, column: row > 0 and column == 2) if color else None)
        if more:
            lines.append(f"... and {more} more (benchmark status {run_dir} --all)")
        parts.append("\n".join(lines))
    if messages := _grouped_messages(records):
        parts.append("\n".join(messages))
    return "\n\n".join(parts)


def _counts_table(records: list[Record], states: list[str], color: bool) -> list[str]:
    """One row per variant (and the follow-up job), a column per state present, and the totals."""
    per_variant: dict[str, Counter[str]] = {}
    for r in records:
        name = r.variant if isinstance(r, JobRecord) else "(--then)"
        per_variant.setdefault(name, Counter())[r.state] += 1
    counted = list(per_variant.items())
    if len(counted) > 1:
        counted.append(("total", Counter(r.state for r in records)))
    rows = [("variant", *states, "total")]
    rows += [(name, *(str(n[s]) if n[s] else "-" for s in states), str(n.total())) for name, n in counted]
    painted = (lambda row, column: row == 0 and 0 < column <= len(states)) if color else None
    return _aligned(rows, range(1, len(states) + 2), painted)


def _job_row(r: Record, run_dir: str) -> tuple[str, ...]:
    job = r if isinstance(r, JobRecord) else None  # else the follow-up job
    wandb = " ".join(x for x in (job.wandb_name, f"({job.wandb_id})" if job.wandb_id else None) if x) if job else ""
    pid = getattr(r, "pid", None)  # a local job's process
    return (
        job.variant if job else "(--then)",
        str(job.seed) if job else "",
        r.state,
        "" if r.exit_code is None else str(r.exit_code),
        _duration(r.duration),
        str(len(job.tries) + 1) if job else "",
        f"pid {pid}" if pid else (r.scheduler_id or ""),
        r.node or "",
        os.path.join(run_dir, r.log) if r.log else "",
        wandb,
    )


def _aligned(
    rows: list[tuple[str, ...]], right: Iterable[int], painted: Callable[[int, int], bool] | None = None
) -> list[str]:
    """Columns two spaces apart, the `right` ones right-aligned. The cells `painted(row, column)` picks
    hold a state, coloured as the state."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    right = set(right)
    lines = []
    for r, row in enumerate(rows):
        cells = []
        for c, cell in enumerate(row):
            pad = " " * (widths[c] - len(cell))
            if painted and painted(r, c):
                cell = f"\x1b[{_ANSI.get(_style(cell), '0')}m{cell}\x1b[0m"
            cells.append(pad + cell if c in right else cell + pad)
        lines.append("  ".join(cells).rstrip())
    return lines


def _grouped_messages(records: list[Record]) -> list[str]:
    """Each job's message, one line per message: many jobs often share one (a refused submission,
    a stuck array)."""
    ids: dict[str, list[str]] = {}
    for r in records:
        if r.message:
            ids.setdefault(r.message, []).append(r.id)
    lines = []
    for message, who in ids.items():
        if len(who) == 1:
            lines.append(f"{who[0]}: {message}")
        else:
            some = ", ".join(who[:3]) + (", ..." if len(who) > 3 else "")
            lines.append(f"{len(who)} jobs ({some}): {message}")
    return lines


def log_tail(path: Path, redactor: Redactor, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    return redactor.text("\n".join(text.splitlines()[-lines:]))


def final_summary(records: list[Record], run_dir: Path, redactor: Redactor, seconds: float) -> int:
    """The sweep's last words: how many completed, and the log tail of each that did not. Exit code."""
    failed = [r for r in records if r.state != COMPLETED]
    say(f"{len(records) - len(failed)}/{len(records)} jobs completed in {seconds:.1f}s")
    for record in failed:
        log = run_dir / record.log
        say(f"\n{record.id} {record.state} (exit {record.exit_code}), log {log}:", style="red")
        if record.message:
            say(record.message)
        on_slurm = not (isinstance(record, JobRecord) and record.pid)
        if on_slurm and record.state == "FAILED" and not log.exists():
            say(f"(no log: Slurm could not open {log} for the task, which then failed before its script ran; "
                "the folder must exist on the node and be writable by the job's user)")
        else:
            say(log_tail(log, redactor))
    return 1 if failed else 0
