"""Process identity on Linux: a pid plus its start time, so a reused pid is never mistaken for ours."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path


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


def _descendants(roots: list[int]) -> list[int]:
    """The processes under `roots`, from /proc: each parent's children, breadth first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_bytes().rpartition(b")")[2].split()  # after the name, which may hold spaces
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # a process that ended while we looked
    tree = list(roots)
    for parent in tree:  # grows while it is walked
        tree.extend(children.get(parent, []))
    return tree[len(roots):]


def stop_process_trees(roots: list[int], grace: float, hurry: Callable[[], bool] | None = None) -> None:
    """Stop each root and everything it started: SIGTERM to its process group and to each of its
    descendants, then SIGKILL to whatever is left after `grace` seconds, or as soon as `hurry()` says so
    (a second Ctrl-C). Descendants are known by pid and start time, so a pid reused in the meantime is
    never hit."""
    members = {pid: process_start(pid) for pid in [*roots, *_descendants(roots)]}
    members = {pid: start for pid, start in members.items() if start is not None}

    def signal_all(signum: int) -> None:
        for root in roots:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(root, signum)  # a job is its own process group: whatever it forked since too
        for pid, start in members.items():
            if process_start(pid) == start:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(process_start(pid) == start for pid, start in members.items()):
        if hurry and hurry():
            break
        time.sleep(0.05)
    signal_all(signal.SIGKILL)
