"""Process identity on Linux: a pid plus its start time, so a reused pid is never mistaken for ours."""

from __future__ import annotations

import os
from pathlib import Path

_HARNESS_PID = "harness.pid"


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if no such process is running."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields from 3 on; the command name (field 2) may hold spaces, so split after its parenthesis.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # a zombie has ended; only its exit status is left to collect
        return None
    return int(fields[19])  # field 22, the start time


def is_alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and process_start(pid) == start


def claim_run_dir(run_dir: Path) -> None:
    """Record this process as the run dir's harness, for `cancel` and for `resume` to refuse."""
    pid = os.getpid()
    (run_dir / _HARNESS_PID).write_text(f"{pid} {process_start(pid)}\n")


def live_harness(run_dir: Path) -> int | None:
    """The pid of another live harness process working on this run dir, if any."""
    try:
        pid, start = map(int, (run_dir / _HARNESS_PID).read_text().split())
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and is_alive(pid, start) else None
