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

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from benchmark.plan import Job, Plan

MANIFEST_NAME = "manifest.jsonl"
LOCK_NAME = ".lock"

# A job's states, in the order it goes through them. The harness writes the first four and the
# outcome; the scheduler says when a queued job runs and how it ended (Slurm adds its own final
# states, e.g. TIMEOUT or NODE_FAIL).
PENDING = "PENDING"  # planned: no try of it handed to a scheduler yet
SUBMITTING = "SUBMITTING"  # intent: about to be handed over under `token`; the scheduler may have it or not
HELD = "HELD"  # the scheduler has it, held (Slurm): it starts once released
QUEUED = "QUEUED"  # released: waiting for resources
RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
# RUNNING in the records, but its process is gone and it left no exit code behind.
LOST = "LOST"
# The scheduler refused the submission; the job never existed there.
NOT_SUBMITTED = "NOT_SUBMITTED"

# States in which a try may still change; any other state is final.
ACTIVE_STATES = {PENDING, SUBMITTING, HELD, QUEUED, RUNNING, "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING",
                 "SUSPENDED"}
# ... of those, the ones in which the scheduler has the try.
SUBMITTED_STATES = ACTIVE_STATES - {PENDING, SUBMITTING}


class ManifestError(ValueError):
    """A run dir whose records cannot be read or written; the message names the file and line."""


class RunDirBusy(ManifestError):
    """Another live process owns the run dir."""


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
    token: str | None = None  # names this try's submission where the scheduler keeps it (Slurm's --comment)
    scheduler_id: str | None = None  # Slurm's job id ("123_4"), or the local pool's name for the try
    pid: int | None = None  # a local process: its wrapper's pid
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

    def reset(self) -> None:
        """Back to planned, for a new try."""
        self.state, self.start, self.end, self.exit_code = PENDING, None, None, None
        self.token = self.scheduler_id = self.pid = self.node = self.message = None


@dataclass(kw_only=True)
class JobRecord(Record):
    """One variant run with one seed, and its earlier tries."""

    id: str
    variant: str
    seed: int
    gpus: str | None = None  # the job's CUDA_VISIBLE_DEVICES
    pid_start: int | None = None  # submitit's local controller: its start time, tells a reused pid apart
    tries: list[dict[str, Any]] = field(default_factory=list)  # finished earlier tries, oldest first
    wandb_id: str | None = None
    wandb_name: str | None = None

    @classmethod
    def from_job(cls, job: Job, log: str) -> JobRecord:
        return cls(id=job.id, variant=job.variant, seed=job.seed, command=job.command, log=log)

    def archive_try(self) -> None:
        """Keep this try's outcome in `tries` and reset the record for the next one."""
        self.tries.append(
            {k: getattr(self, k) for k in ("state", "start", "end", "exit_code", "log", "scheduler_id", "node",
                                           "wandb_id")}
        )
        self.reset()
        self.pid_start = self.gpus = self.wandb_id = self.wandb_name = None


@dataclass(kw_only=True)
class FollowUpRecord(Record):
    """`--then`: one command run after every task of the sweep has ended. It is no variant: its own
    kind of manifest line, so a variant may be named anything, `then` included."""

    id: ClassVar[str] = "then"


_JOB_FIELDS = {f.name for f in fields(JobRecord)}
_FOLLOW_UP_FIELDS = {f.name for f in fields(FollowUpRecord)}


class Manifest:
    """The records of a run dir. A manifest opened to change it (`create`, `load(own=True)`) holds the
    run dir's lock until `close()` or the process's end: one owner at a time."""

    def __init__(
        self, run_dir: Path, plan: Plan, jobs: dict[str, JobRecord], followup: FollowUpRecord | None = None
    ) -> None:
        self.run_dir = run_dir
        self.plan = plan
        self.jobs = jobs
        self.followup = followup
        self._fd: int | None = None
        self._lock: int | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @classmethod
    def create(
        cls, run_dir: Path, plan: Plan, records: Iterable[JobRecord], followup: FollowUpRecord | None = None
    ) -> Manifest:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ManifestError(f"cannot make the run dir {run_dir}: {error.strerror}") from None
        path = run_dir / MANIFEST_NAME
        exists = f"{path} already exists: use `benchmark resume {run_dir}` or another --run-dir"
        if path.exists():  # checked before the lock too, which would note this process as the run dir's owner
            raise ManifestError(exists)
        lock = own_run_dir(run_dir)
        if path.exists():
            os.close(lock)
            raise ManifestError(exists)
        manifest = cls(run_dir, plan, {r.id: r for r in records}, followup)
        manifest._lock = lock
        lines = [json.dumps({"plan": plan.to_json()})] + [_line(r) for r in manifest.records()]
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(run_dir)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            manifest.close()
            raise ManifestError(f"cannot write {path}: {error.strerror}; nothing was started") from None
        return manifest

    @classmethod
    def load(cls, run_dir: Path, own: bool = False) -> Manifest:
        """The run dir's records; with `own`, also its lock, for changing them (RunDirBusy if taken)."""
        path = run_dir / MANIFEST_NAME
        lock = own_run_dir(run_dir) if own and path.is_file() else None
        try:
            manifest = cls._read(run_dir)
        except BaseException:
            if lock is not None:
                os.close(lock)
            raise
        manifest._lock = lock
        return manifest

    @classmethod
    def _read(cls, run_dir: Path) -> Manifest:
        path = run_dir / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{run_dir} holds no {MANIFEST_NAME}: is it a run dir made by `benchmark`?")
        plan: Plan | None = None
        jobs: dict[str, JobRecord] = {}
        followup: FollowUpRecord | None = None
        try:
            text = path.read_text()
        except OSError as error:
            raise ManifestError(f"cannot read {path}: {error.strerror}") from None
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
                    # A torn last line: the harness died or the disk filled mid-append. Everything before it stands.
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
        `sync` the lines (and every line before them) also survive a crash of the machine.

        The lines go in one write. If it fails (a full disk), the file is cut back to its last whole
        line and ManifestError is raised: the records on disk stay readable, and say what they said."""
        if not records:
            return
        for record in records:
            if isinstance(record, FollowUpRecord):
                self.followup = record
            elif isinstance(record, JobRecord):
                self.jobs[record.id] = record
        data = "".join(_line(record) + "\n" for record in records).encode()
        fd = self._append_fd()
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if sync:
                os.fsync(fd)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise ManifestError(f"cannot write {self.path}: {error.strerror}. Its records up to this moment stand; "
                                f"once the cause is fixed, `benchmark resume {self.run_dir}` goes on") from None

    def _append_fd(self) -> int:
        """The file, opened for appending; a torn last line (a write cut short by a crash) is cut first."""
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            size = os.fstat(fd).st_size
            tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
            if tail and not tail.endswith(b"\n"):
                os.ftruncate(fd, size - len(tail) + tail.rfind(b"\n") + 1)
            self._fd = fd
        return self._fd

    def sync(self) -> None:
        """Make every line saved so far survive a crash of the machine."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """Stop writing, and give up the run dir."""
        for fd in (self._fd, self._lock):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock = None


def own_run_dir(run_dir: Path) -> int:
    """Take the run dir's lock for the life of this process (or until its fd is closed): the one
    process that may change the run. The kernel frees it when the process dies, however it dies."""
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ManifestError(f"cannot open {path}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        # The holder stamps the lock just after taking it: an empty stamp is one about to be written.
        deadline = time.monotonic() + 1.0
        while (stamp := held_by(path)) is not None and not stamp.strip() and time.monotonic() < deadline:
            time.sleep(0.01)
        owner = run_dir_owner(run_dir)
        who = f"pid {owner[0]} (started {owner[1]})" if owner else "another process"
        raise RunDirBusy(f"{run_dir} is in use by {who}: wait for it, or stop it with `benchmark cancel "
                         f"{run_dir}`") from None
    stamp = f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, stamp, 0)
    return fd


def run_dir_owner(run_dir: Path) -> tuple[int, str] | None:
    """The live process that owns the run dir, and when it started, or None."""
    pid, _, started = (held_by(run_dir / LOCK_NAME) or "").strip().partition(" ")
    return (int(pid), started) if pid.isdigit() else None


def held_by(path: Path) -> str | None:
    """What the holder of the flock on `path` wrote into it (who it is), or None while no process holds it.
    Asks with a shared lock, let go at once: a holder taking it just then waits microseconds."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode(errors="replace")
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


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
