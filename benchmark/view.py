"""What the user sees: a rich live view on a terminal, plain one-line events elsewhere, status tables."""

from __future__ import annotations

import functools
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.manifest import ACTIVE_STATES, COMPLETED, PENDING, RUNNING, JobRecord, Record
from benchmark.redact import Redactor

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table

# rich is imported only where it is used: on a terminal, and for tables. A sweep launched off a
# terminal (CI, scripts, benchmarks) prints plain lines and is spared rich's import, a sixth of
# its start-up time.
ON_TERMINAL = sys.stdout.isatty()
_STATE_STYLE = {COMPLETED: "green", RUNNING: "cyan", PENDING: "dim"}
_LOG_TAIL_LINES = 15


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

    def __init__(self, records: list[Record], redactor: Redactor) -> None:
        self.records = records
        self.redactor = redactor
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
            (f"pending {counts[PENDING]}", "dim"),
            f"   {done}/{total}  elapsed {_duration(elapsed)}",
            f"  eta {_duration(eta)}" if eta is not None else "",
        )
        running = Table.grid(padding=(0, 2))
        for record in self.records:
            if record.state == RUNNING:
                gpu = f"gpu {record.gpus}" if isinstance(record, JobRecord) and record.gpus else ""
                running.add_row(record.id, _duration(record.duration), gpu)
        return Group(summary, running)


def status_table(records: Iterable[Record], run_dir: Path, title: str) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for column in ("variant", "seed", "state", "exit", "duration", "tries", "job id", "node", "log", "W&B run"):
        table.add_column(column)
    for r in records:
        job = r if isinstance(r, JobRecord) else None  # else the follow-up job
        wandb = " ".join(x for x in (job.wandb_name, f"({job.wandb_id})" if job.wandb_id else None) if x) if job else ""
        table.add_row(
            job.variant if job else "(--then)",
            str(job.seed) if job else "",
            Text(r.state, style=_style(r.state)),
            "" if r.exit_code is None else str(r.exit_code),
            _duration(r.duration),
            str(len(job.tries) + 1) if job else "",
            f"pid {job.pid}" if job and job.pid else (r.scheduler_id or ""),
            r.node or "",
            str(run_dir / r.log) if r.log else "",
            wandb,
        )
    return table


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
