"""The local pool as a scheduler: at most `workers` processes at once, each on its own GPU(s).

Each try is named by its token, which is also its scheduler id. Before the wrapper of a try is
spawned, the harness takes `RUN_DIR/locks/<token>` (flock) and hands the locked file to it; the
wrapper holds it until it exits, writes its pid into it, and writes the command's exit code to
`RUN_DIR/exit/<token>` before it exits. So, for any harness, live or new:

    lock held                  the try runs (whoever started it): wait for it, never start it again
    lock free, exit file       it ended with that code
    lock free, no exit file    it never started (SUBMITTING), or died without a word (LOST)

The kernel frees a lock when its holder dies, before the holder is reaped, so no zombie, and no pid
reused by another process, ever passes for a running job.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark.backends import Scheduler, log_path, task_env, variant_env
from benchmark.manifest import EXIT_DIR, LOST, RUNNING, SUBMITTING, JobRecord, Record, held_by
from benchmark.plan import LocalSettings, Plan
from benchmark.procs import stop_process_trees

LOCK_DIR = "locks"
# bash -c WRAPPER bash COMMAND EXIT_FILE LOCK_FD: the wrapper notes its pid in the lock it was handed,
# runs the command as `bash -c` would (the command does not inherit the lock: a daemon it leaves behind
# must not pass for the job), and writes the command's exit code, even when the command calls `exit`.
_WRAPPER = 'lock=$3; echo $$ >&$lock; trap \'echo $? > "$2"\' EXIT; eval "$1" {lock}>&-'


class GpuSlots:
    """Which GPUs are free: each GPU takes at most `jobs_per_gpu` jobs at once."""

    def __init__(self, gpus: list[str], jobs_per_gpu: int, taken: list[str]) -> None:
        self.free = Counter({gpu: jobs_per_gpu for gpu in gpus})
        self.free.subtract(gpu for gpu in taken if gpu in self.free)

    def take(self, count: int) -> list[str] | None:
        # Fill the emptiest GPUs first, so jobs spread out before they double up.
        chosen = [gpu for gpu, n in self.free.most_common(count) if n > 0]
        if len(chosen) < count:
            return None
        self.free.subtract(chosen)
        return chosen


class LocalPool(Scheduler):
    parallel_submit = True  # while one start waits for its child to exec, the others go on

    def __init__(self, plan: Plan, run_dir: Path) -> None:
        super().__init__(plan, run_dir)
        assert isinstance(plan.backend, LocalSettings)
        self.settings = plan.backend
        self.children: dict[str, subprocess.Popen[bytes]] = {}  # by token: the tries this process spawned

    def describe(self, records: list[JobRecord]) -> str:
        settings, width = self.settings, self.settings.concurrency
        slots = GpuSlots(list(settings.gpus), settings.jobs_per_gpu, [])
        lines = [f"local pool: {width} at a time, GPUs: {','.join(settings.gpus) or 'none'}"]
        for i, record in enumerate(records):
            # The first wave's GPUs are known; later jobs take whichever GPUs free up first.
            gpus = slots.take(settings.gpus_per_job) if settings.gpus and i < width else None
            where = f"gpu {','.join(gpus)}" if gpus else ("next free gpu" if settings.gpus else "no gpu")
            log = self.run_dir / log_path(record.variant, record.seed, len(record.tries) + 1)
            lines.append(f"{record.id}  [{where}]  log {log}\n  $ {record.command}")
        return "\n".join(lines)

    def notes(self) -> list[str]:
        if self.settings.concurrency < self.settings.workers:
            return [f"running {self.settings.concurrency} at a time: that is as many jobs as the GPUs take"]
        return []

    def batches(self, pending: list[JobRecord], active: list[JobRecord]) -> list[list[JobRecord]]:
        """One job per submission, as many as free workers and GPUs allow; each job's GPUs chosen now."""
        running = [r for r in active if r.state in (RUNNING, SUBMITTING)]
        slots = GpuSlots(list(self.settings.gpus), self.settings.jobs_per_gpu,
                         [gpu for r in running if r.gpus for gpu in r.gpus.split(",")])
        batches = []
        for record in pending[: max(0, self.settings.concurrency - len(running))]:
            gpus = slots.take(self.settings.gpus_per_job) if self.settings.gpus else []
            if gpus is None:
                break
            record.gpus = ",".join(gpus) or None
            record.log = log_path(record.variant, record.seed, len(record.tries) + 1)
            batches.append([record])
        return batches

    def submit(self, records: list[JobRecord], token: str, prepared: Any, exclude: list[str]) -> list[str]:
        (record,) = records
        record.scheduler_id = token
        env = os.environ | variant_env(self.plan, self.run_dir, record.variant, os.environ)
        env |= task_env(record, os.environ)
        if record.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = record.gpus
        log = self.run_dir / record.log
        log.parent.mkdir(parents=True, exist_ok=True)
        (self.run_dir / EXIT_DIR).mkdir(exist_ok=True)
        lock = _hold(self.run_dir / LOCK_DIR / token)
        try:
            with open(log, "wb") as out:
                self.children[token] = subprocess.Popen(
                    ["/bin/bash", "-c", _WRAPPER, "bash", record.command, str(self._exit_file(token)), str(lock)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, pass_fds=(lock,),
                    env=env, cwd=self.plan.workdir(self.run_dir, record.variant), start_new_session=True,
                )
        finally:
            os.close(lock)  # the wrapper holds it now, alone
        record.pid = self.children[token].pid
        return []

    def find(self, records: list[Record], token: str) -> bool:
        (record,) = records
        holder = held_by(self.run_dir / LOCK_DIR / token)
        started = holder is not None or self._exit_file(token).exists()
        if started:
            record.scheduler_id, record.pid = token, _pid(holder)
        return started

    def poll(self, records: list[Record]) -> list[str]:
        for record in records:
            token = record.scheduler_id or ""
            child = self.children.get(token)
            if child is not None and child.poll() is None:
                continue
            if child is None and held_by(self.run_dir / LOCK_DIR / token) is not None:
                record.state = RUNNING
                continue
            self.children.pop(token, None)
            if not record.end_from_exit_file(self.run_dir):
                record.state = LOST
                how = f"killed by signal {-child.returncode}" if child and child.returncode < 0 else "gone"
                record.message = f"its wrapper is {how} and left no exit code"
            elif child is not None:
                record.end = time.time()  # the file's time is the kernel's coarse clock, which may read before start
        return []

    def wait(self, timeout: float, wakeup: int) -> None:
        """Until one of this process's children ends (pidfds), or `timeout` for tries it adopted."""
        fds = []
        try:
            for child in self.children.values():
                with contextlib.suppress(ProcessLookupError):
                    fds.append(os.pidfd_open(child.pid))
            select.select([wakeup, *fds], [], [], timeout)
        finally:
            for fd in fds:
                os.close(fd)

    def cancel(self, records: list[Record], hurry: Callable[[], bool] | None = None) -> list[str]:
        pids = []
        for record in records:
            holder = held_by(self.run_dir / LOCK_DIR / record.scheduler_id) if record.scheduler_id else None
            if holder is not None:
                pids.append(record.pid or _pid(holder))
        stop_process_trees([pid for pid in pids if pid], self.plan.grace_period, hurry)
        for token in [r.scheduler_id for r in records]:
            if child := self.children.pop(token or "", None):
                child.wait()
        return []

    def _exit_file(self, token: str) -> Path:
        return self.run_dir.resolve() / EXIT_DIR / token


def _hold(path: Path) -> int:
    """Open and lock `path`; the fd, for the wrapper to inherit."""
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a `status` looks at it
    return fd


def _pid(holder: str | None) -> int | None:
    """The pid a wrapper wrote into its lock (none yet, or a full disk kept it out: None)."""
    first = (holder or "").split()[:1]
    return int(first[0]) if first and first[0].isdigit() else None
