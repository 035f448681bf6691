"""Backends run the jobs of a manifest. They share one small interface, the manifest's records, and
one job contract: the environment every job gets and where it writes its exit code.

    local     a pool of subprocesses on this machine (local.py)
    slurm     one sbatch job array per variant, from a jinja2 template (slurm.py)
    submitit  the same arrays through submitit's executor, on Slurm or locally (submitit.py)

The two array backends follow one submission flow (array.py) and fill in its few hooks. A backend's
settings are the plan's (`plan.backend`), so `resume` and `status` act exactly as the launch did.
"""

from __future__ import annotations

import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

from benchmark.manifest import LOST, RUNNING, JobRecord, Manifest
from benchmark.plan import LocalSettings, Plan, SlurmSettings
from benchmark.procs import is_alive
from benchmark.tags import merge_wandb_tags


class BackendError(RuntimeError):
    """A cluster command that failed; the message carries the cluster's own words."""


class Backend(ABC):
    @abstractmethod
    def describe(self, run_dir: Path, plan: Plan, records: list[JobRecord]) -> str:
        """What `launch` would do, for `--dry-run`: nothing is started or written."""

    @abstractmethod
    def launch(self, manifest: Manifest, ids: list[str]) -> int:
        """Run or submit these jobs (and the follow-up job, if not submitted yet), keeping their records
        current; the CLI's exit code."""

    @abstractmethod
    def refresh(self, manifest: Manifest) -> str | None:
        """Bring the records in memory up to date with reality; a note for the user, if any."""

    @abstractmethod
    def cancel(self, manifest: Manifest) -> int:
        """Stop every job of the run that is still pending or running; the CLI's exit code."""


def get_backend(plan: Plan) -> Backend:
    settings = plan.backend
    if isinstance(settings, LocalSettings):
        from benchmark.backends.local import LocalBackend

        return LocalBackend(plan)
    if isinstance(settings, SlurmSettings):
        from benchmark.backends.slurm import SlurmBackend

        return SlurmBackend(plan)
    from benchmark.backends.submitit import SubmititLocal, SubmititSlurm

    return SubmititSlurm(plan) if settings.cluster == "slurm" else SubmititLocal(plan)


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


def settle_process(run_dir: Path, record: JobRecord) -> None:
    """A job that runs as a local process: ended if it wrote its exit file, running while its process
    lives, else lost (it died without a word, or with the machine)."""
    if not record.end_from_exit_file(run_dir):
        record.state = RUNNING if is_alive(record.pid, record.pid_start) else LOST
