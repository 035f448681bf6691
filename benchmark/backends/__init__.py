"""Schedulers: the hooks the sweep engine (benchmark/engine.py) drives, one per backend, and the job
contract every backend keeps: the environment each job gets, and where it writes its exit code.

    local     a pool of processes on this machine (local.py)
    slurm     one sbatch job array per variant, from a jinja2 template (slurm.py)
    submitit  the same arrays through submitit's executor, on Slurm or locally (submitit.py)

A scheduler submits, releases, polls, waits and cancels; it never decides what a job's state means
for the sweep, saves a record or prints: the engine does. A backend's settings are the plan's
(`plan.backend`), so `resume` and `status` act exactly as the launch did.
"""

from __future__ import annotations

import os
import secrets
import select
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmark.manifest import FollowUpRecord, JobRecord, Record
from benchmark.plan import LocalSettings, Plan, PlanError, SlurmSettings, variant_folder
from benchmark.tags import merge_wandb_tags


class BackendError(RuntimeError):
    """A cluster command that failed; the message carries the cluster's own words."""


class Scheduler(ABC):
    """What the engine asks of a backend. Hooks change the records they are given in place: their
    scheduler ids, logs, nodes and, in `poll`, the states the scheduler reports."""

    holds = False  # a submission stays held until `release`
    parallel_submit = False  # the submissions of one wave may go out from threads at once

    def __init__(self, plan: Plan, run_dir: Path) -> None:
        self.plan = plan
        self.run_dir = run_dir

    @abstractmethod
    def describe(self, records: list[JobRecord]) -> str:
        """What a launch would do, for `--dry-run`: nothing is started or written."""

    def notes(self) -> list[str]:
        """What the user should know before the sweep starts, a line each."""
        return []

    def batches(self, pending: list[JobRecord], active: list[JobRecord]) -> list[list[JobRecord]]:
        """The submissions to make now, of the pending jobs: one array per variant unless overridden."""
        groups: dict[str, list[JobRecord]] = {}
        for record in pending:
            groups.setdefault(record.variant, []).append(record)
        return list(groups.values())

    def prepare(self, records: list[JobRecord]) -> Any:
        """What submitting these jobs takes (a batch script, executor parameters); PlanError if it cannot be
        made. Called for every submission of a wave before any is made."""
        return None

    @abstractmethod
    def submit(self, records: list[JobRecord], token: str, prepared: Any, exclude: list[str]) -> list[str]:
        """Hand the jobs over, held where the scheduler holds, under `token`, on no node of `exclude`:
        their scheduler ids and logs set; lines for the user. BackendError if the scheduler refuses."""

    def find(self, records: list[Record], token: str) -> bool:
        """After a crash between recording the intent and recording the outcome: whether the scheduler has
        the submission made under `token` (its ids then set on the records)."""
        return False

    def release(self, records: list[Record]) -> str | None:
        """Let held jobs start; a warning for the user, if any."""
        return None

    @abstractmethod
    def poll(self, records: list[Record]) -> list[str]:
        """Bring these submitted records up to date with the scheduler; notes for the user."""

    def wait(self, timeout: float, wakeup: int) -> None:
        """Block until something may have changed: at most `timeout` seconds, or until `wakeup` is readable."""
        select.select([wakeup], [], [], timeout)

    @abstractmethod
    def cancel(self, records: list[Record], hurry: Callable[[], bool] | None = None) -> list[str]:
        """Stop these jobs (their states are the engine's to set); lines for the user."""

    def submit_followup(self, followup: FollowUpRecord, after: list[Record], token: str) -> list[str]:
        raise PlanError("--then needs a scheduler that knows dependencies: Slurm")


def get_scheduler(plan: Plan, run_dir: Path) -> Scheduler:
    settings = plan.backend
    if isinstance(settings, LocalSettings):
        from benchmark.backends.local import LocalPool

        return LocalPool(plan, run_dir)
    if isinstance(settings, SlurmSettings):
        from benchmark.backends.slurm import SlurmBackend

        return SlurmBackend(plan, run_dir)
    from benchmark.backends.submitit import SubmititLocal, SubmititSlurm

    return SubmititSlurm(plan, run_dir) if settings.cluster == "slurm" else SubmititLocal(plan, run_dir)


def new_token() -> str:
    """A name for one submission, unique in the run: the scheduler keeps it, so a crashed harness's
    submission can be found again."""
    return f"bm-{secrets.token_hex(6)}"


def log_path(variant: str, seed: int, try_number: int) -> str:
    """A local job's log, relative to the run dir: one folder per variant, one file per seed and try."""
    suffix = f".try{try_number}" if try_number > 1 else ""
    return f"logs/{variant_folder(variant)}/seed-{seed}{suffix}.log"


def variant_env(plan: Plan, run_dir: Path, variant: str, environ: Mapping[str, str]) -> dict[str, str]:
    """What every job of `variant` finds in its environment, whatever runs it. The user's own W&B
    group stays; the sweep's tags are added to the user's."""
    env = {
        "BENCHMARK_RUN_DIR": str(run_dir.resolve()),
        "BENCHMARK_VARIANT": variant,
        "WANDB_RUN_GROUP": environ.get("WANDB_RUN_GROUP", variant),
    }
    at_ref = plan.variant(variant)
    # A `--ref` variant carries its ref's tag, not the tags of the code that launched it.
    if tags := at_ref.wandb_tags if at_ref.commit else plan.wandb_tags:
        env["WANDB_TAGS"] = merge_wandb_tags(environ.get("WANDB_TAGS", ""), list(tags))
    if at_ref.commit:  # `python -m pkg` and `python path/script.py` import the ref's code
        workdir = str(plan.workdir(run_dir, variant))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (workdir, environ.get("PYTHONPATH")) if p)
    return env


def task_env(record: JobRecord, environ: Mapping[str, str]) -> dict[str, str]:
    """What differs between the jobs of one variant: the job, its seed and its W&B run."""
    return {
        "BENCHMARK_JOB_ID": record.id,
        "BENCHMARK_SEED": str(record.seed),
        "WANDB_RUN_ID": record.wandb_id or "",
        "WANDB_NAME": environ.get("WANDB_NAME", record.wandb_name or ""),
    }


def name_wandb_run(record: JobRecord) -> None:
    """Give a try its own W&B run, unless it has one, before it can start: the manifest knows every
    run's id, so a report finds each job's run, whatever folder or project it went to."""
    if record.wandb_id is None:
        record.wandb_id = secrets.token_hex(4)
        record.wandb_name = f"{record.variant}__{record.seed}__{int(time.time())}"
