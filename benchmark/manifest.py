"""The run's records: `RUN_DIR/manifest.jsonl`, the single source of truth for status and resume.

The first line is the plan (`benchmark.plan.Plan`); every later line is a full snapshot of one job
(or of the follow-up job), appended whenever it changes state. The last snapshot of a job wins.
Appending a line costs microseconds where rewriting the whole file costs milliseconds, and a harness
killed at any moment leaves every line it wrote intact. Lines are fsync'd before any job starts, so
after a crash of the whole machine no job can have run without a record; a line torn by such a crash
is the last one, and is skipped. The file is created whole (temp file, fsync, rename), so a crash
never leaves a half-written plan.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from benchmark.plan import Job, Plan

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


# Where a job writes its exit code when it ends: RUN_DIR/exit/<scheduler id>, for every backend.
EXIT_DIR = "exit"


def exit_file(run_dir: Path, scheduler_id: str) -> Path:
    return run_dir / EXIT_DIR / scheduler_id


def read_exit_file(run_dir: Path, scheduler_id: str) -> tuple[int, float] | None:
    """The exit code a job wrote when it ended, and when it wrote it; None while there is none."""
    path = exit_file(run_dir, scheduler_id)
    try:
        return int(path.read_text()), path.stat().st_mtime
    except (OSError, ValueError):
        return None


@dataclass(kw_only=True)
class Record:
    """What a scheduler knows of one job; the sweep's jobs and its follow-up job share it."""

    command: str
    log: str = ""  # relative to the run dir, or absolute
    state: str = PENDING
    scheduler_id: str | None = None  # Slurm's job id ("123_4"), or the pid of a local process
    node: str | None = None
    start: float | None = None
    end: float | None = None
    exit_code: int | None = None
    message: str | None = None  # why it ended as it did, for the user

    @property
    def duration(self) -> float | None:
        if self.start is None:
            return None
        return (self.end or time.time()) - self.start

    def end_from_exit_file(self, run_dir: Path) -> bool:
        """Take the exit code the job itself wrote when it ended; False while there is none."""
        written = read_exit_file(run_dir, self.scheduler_id) if self.scheduler_id else None
        if written is None:
            return False
        code, self.end = written
        self.state, self.exit_code = (COMPLETED if code == 0 else FAILED), code
        return True


@dataclass(kw_only=True)
class JobRecord(Record):
    """One variant run with one seed, and its earlier tries."""

    id: str
    variant: str
    seed: int
    gpus: str | None = None  # the job's CUDA_VISIBLE_DEVICES
    pid_start: int | None = None  # a local process's start time in clock ticks: tells a reused pid apart
    tries: list[dict[str, Any]] = field(default_factory=list)  # finished earlier tries, oldest first
    wandb_id: str | None = None
    wandb_name: str | None = None

    @classmethod
    def from_job(cls, job: Job, log: str) -> JobRecord:
        return cls(id=job.id, variant=job.variant, seed=job.seed, command=job.command, log=log)

    @property
    def pid(self) -> int | None:
        """The pid of a job that runs as a local process, else None (an array task's id reads "123_4")."""
        return int(self.scheduler_id) if self.scheduler_id and self.scheduler_id.isdigit() else None

    def archive_try(self) -> None:
        """Keep this try's outcome in `tries` and reset the record for the next one."""
        self.tries.append(
            {k: getattr(self, k) for k in ("state", "start", "end", "exit_code", "log", "scheduler_id", "node",
                                           "wandb_id")}
        )
        self.state, self.start, self.end, self.exit_code = PENDING, None, None, None
        self.pid_start = self.scheduler_id = self.node = self.message = self.wandb_id = self.wandb_name = None


@dataclass(kw_only=True)
class FollowUpRecord(Record):
    """`--then`: one command run after every task of the sweep has ended. It is no variant: its own
    kind of manifest line, so a variant may be named anything, `then` included."""

    id: ClassVar[str] = "then"

    def reset(self) -> None:
        self.state, self.scheduler_id, self.node, self.start, self.end = PENDING, None, None, None, None
        self.exit_code = self.message = None


_JOB_FIELDS = {f.name for f in fields(JobRecord)}
_FOLLOW_UP_FIELDS = {f.name for f in fields(FollowUpRecord)}


class Manifest:
    def __init__(
        self, run_dir: Path, plan: Plan, jobs: dict[str, JobRecord], followup: FollowUpRecord | None = None
    ) -> None:
        self.run_dir = run_dir
        self.plan = plan
        self.jobs = jobs
        self.followup = followup
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @classmethod
    def create(
        cls, run_dir: Path, plan: Plan, records: Iterable[JobRecord], followup: FollowUpRecord | None = None
    ) -> Manifest:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / MANIFEST_NAME
        if path.exists():
            raise ManifestError(f"{path} already exists: use `benchmark resume {run_dir}` or another --run-dir")
        manifest = cls(run_dir, plan, {r.id: r for r in records}, followup)
        lines = [json.dumps({"plan": plan.to_json()})] + [_line(r) for r in manifest.records()]
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
        plan: Plan | None = None
        jobs: dict[str, JobRecord] = {}
        followup: FollowUpRecord | None = None
        text = path.read_text()
        lines = text.split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if number == 1:
                    plan = Plan.from_json(entry["plan"])
                elif "followup" in entry:
                    followup = FollowUpRecord(**_known(entry["followup"], _FOLLOW_UP_FIELDS))
                else:
                    record = JobRecord(**_known(entry["job"], _JOB_FIELDS))
                    jobs[record.id] = record
            except (ValueError, KeyError, TypeError) as error:
                if number == len(lines) and not text.endswith("\n"):
                    # A torn last line: the machine went down mid-append. Everything before it stands.
                    continue
                why = f"missing key {error}" if isinstance(error, KeyError) else str(error)
                raise ManifestError(f"{path}, line {number}: {why}") from None
        if plan is None:
            raise ManifestError(f"{path}, line 1: no plan record")
        return cls(run_dir, plan, jobs, followup)

    def records(self) -> list[Record]:
        """Every job, then the follow-up job if there is one."""
        return [*self.jobs.values(), *([self.followup] if self.followup else [])]

    def save(self, *records: Record, sync: bool = True) -> None:
        """Append the records' snapshots. A killed harness loses nothing once this returns; with
        `sync` the lines (and every line before them) also survive a crash of the machine."""
        if not records:
            return
        for record in records:
            if isinstance(record, FollowUpRecord):
                self.followup = record
            elif isinstance(record, JobRecord):
                self.jobs[record.id] = record
        data = "".join(_line(record) + "\n" for record in records).encode()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        os.write(self._fd, data)
        if sync:
            os.fsync(self._fd)

    def sync(self) -> None:
        """Make every line saved so far survive a crash of the machine."""
        if self._fd is not None:
            os.fsync(self._fd)


def _line(record: Record) -> str:
    return json.dumps({"followup" if isinstance(record, FollowUpRecord) else "job": vars(record)})


def _known(data: dict[str, Any], known: set[str]) -> dict[str, Any]:
    if unknown := set(data) - known:
        raise ValueError(f"unknown record fields {sorted(unknown)}")
    return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
