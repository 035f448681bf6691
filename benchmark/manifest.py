"""The run's records: `RUN_DIR/manifest.jsonl`, the single source of truth for status and resume.

The first line is the plan; every later line is a full snapshot of one job, appended whenever the
job changes state. The last snapshot of a job wins. Appending a line costs microseconds where
rewriting the whole file costs milliseconds, and a harness killed at any moment leaves every line it
wrote intact. Lines are fsync'd before any job starts, so after a crash of the whole machine no job
can have run without a record; a line torn by such a crash is the last one, and is skipped. The file
is created whole (temp file, fsync, rename), so a crash never leaves a half-written plan.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from benchmark.plan import Job

MANIFEST_NAME = "manifest.jsonl"

PENDING = "PENDING"
RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
# Derived, never written by a live harness: RUNNING in the records, but its process is gone and it
# left no exit code behind.
LOST = "LOST"
# Slurm refused the submission; the job never existed on the cluster.
NOT_SUBMITTED = "NOT_SUBMITTED"

# States in which a try may still change; any other state is final (Slurm adds its own, e.g. TIMEOUT).
ACTIVE_STATES = {PENDING, RUNNING, "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


class ManifestError(ValueError):
    """A run dir whose records cannot be read; the message names the file and line."""


@dataclass
class JobRecord:
    id: str
    variant: str
    seed: int
    command: str
    log: str  # relative to the run dir
    state: str = PENDING
    gpus: str | None = None  # the job's CUDA_VISIBLE_DEVICES
    pid: int | None = None
    pid_start: int | None = None  # the process's start time in clock ticks: tells a reused pid apart
    slurm_id: str | None = None
    node: str | None = None
    start: float | None = None
    end: float | None = None
    exit_code: int | None = None
    tries: list[dict[str, Any]] = field(default_factory=list)  # finished earlier tries, oldest first
    wandb_id: str | None = None
    wandb_name: str | None = None
    message: str | None = None

    @classmethod
    def from_job(cls, job: Job, log: str) -> JobRecord:
        return cls(id=job.id, variant=job.variant, seed=job.seed, command=job.command, log=log)

    @property
    def duration(self) -> float | None:
        if self.start is None:
            return None
        return (self.end or time.time()) - self.start

    def end_from_exit_file(self, path: Path) -> bool:
        """Take the exit code the job itself wrote when it ended; False while there is none."""
        try:
            code, end = int(path.read_text()), path.stat().st_mtime
        except (OSError, ValueError):
            return False
        self.state, self.exit_code, self.end = (COMPLETED if code == 0 else FAILED), code, end
        return True

    def archive_try(self) -> None:
        """Keep this try's outcome in `tries` and reset the record for the next one."""
        self.tries.append(
            {k: getattr(self, k) for k in ("state", "start", "end", "exit_code", "log", "slurm_id", "wandb_id")}
        )
        self.state, self.start, self.end, self.exit_code = PENDING, None, None, None
        self.pid = self.pid_start = self.slurm_id = self.node = self.message = None


_JOB_FIELDS = {f.name for f in fields(JobRecord)}


class Manifest:
    def __init__(self, run_dir: Path, plan: dict[str, Any], jobs: dict[str, JobRecord]) -> None:
        self.run_dir = run_dir
        self.plan = plan
        self.jobs = jobs
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @classmethod
    def create(cls, run_dir: Path, plan: dict[str, Any], records: Iterable[JobRecord]) -> Manifest:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / MANIFEST_NAME
        if path.exists():
            raise ManifestError(f"{path} already exists: use `benchmark resume {run_dir}` or another --run-dir")
        manifest = cls(run_dir, plan, {r.id: r for r in records})
        lines = [json.dumps({"plan": plan})] + [json.dumps({"job": vars(r)}) for r in manifest.jobs.values()]
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(run_dir)
        return manifest

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        path = run_dir / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{run_dir} holds no {MANIFEST_NAME}: is it a run dir made by `benchmark`?")
        plan: dict[str, Any] | None = None
        jobs: dict[str, JobRecord] = {}
        text = path.read_text()
        lines = text.split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if number == 1:
                    plan = entry["plan"]
                    continue
                record = entry["job"]
                unknown = set(record) - _JOB_FIELDS
                if unknown:
                    raise ValueError(f"unknown job fields {sorted(unknown)}")
                jobs[record["id"]] = JobRecord(**record)
            except (ValueError, KeyError, TypeError) as error:
                if number == len(lines) and not text.endswith("\n"):
                    # A torn last line: the machine went down mid-append. Everything before it stands.
                    continue
                why = f"missing key {error}" if isinstance(error, KeyError) else str(error)
                raise ManifestError(f"{path}, line {number}: {why}") from None
        if plan is None:
            raise ManifestError(f"{path}, line 1: no plan record")
        return cls(run_dir, plan, jobs)

    def save(self, *records: JobRecord, sync: bool = True) -> None:
        """Append the records' snapshots. A killed harness loses nothing once this returns; with
        `sync` the lines (and every line before them) also survive a crash of the machine."""
        if not records:
            return
        for record in records:
            self.jobs[record.id] = record
        data = "".join(json.dumps({"job": vars(record)}) + "\n" for record in records).encode()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        os.write(self._fd, data)
        if sync:
            os.fsync(self._fd)

    def sync(self) -> None:
        """Make every line saved so far survive a crash of the machine."""
        if self._fd is not None:
            os.fsync(self._fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
