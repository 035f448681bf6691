"""A harness run dir as a source: which variants and seeds were expected, and what became of each.

The manifest (`benchmark.manifest`) knows every job's variant, seed and state, and the W&B run id
and name the harness gave it. Runs found by the other sources are matched to jobs by that id or
name; runs of other sweeps lying in the same wandb folder match no job and are left out. A job with
no W&B run yet is still counted: running, crashed, or (pending, or its data not found) missing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark import manifest as harness
from benchmark.manifest import JobRecord, Manifest
from benchmark.report.runs import CRASHED, FINISHED, RUNNING, Run


def offline_dirs(run_dir: Path) -> list[Path]:
    """Where a sweep's offline runs are when WANDB_DIR was not set: wandb writes `./wandb` under
    the jobs' working directory, which the plan records; a WANDB_DIR inside the run dir is found too."""
    manifest = Manifest.load(run_dir)
    return list(dict.fromkeys([run_dir, Path(manifest.plan.get("cwd", run_dir))]))


def wandb_ids(run_dir: Path) -> set[str]:
    """The W&B run ids the harness gave its jobs, every try included: offline files are named
    after them, so a shared wandb folder is narrowed down before anything is decoded."""
    jobs = Manifest.load(run_dir).jobs.values()
    ids = {job.wandb_id for job in jobs} | {t.get("wandb_id") for job in jobs for t in job.tries}
    return {i for i in ids if i}


def match_jobs(run_dir: Path, runs: list[Run]) -> tuple[list[Run], dict[str, list[int]]]:
    """The sweep's runs, each tagged with its job's variant and seed, one per job (its latest try),
    plus a placeholder for each running or failed job that has no W&B run; and the seeds expected
    per variant."""
    manifest = Manifest.load(run_dir)
    variants = [v["name"] for v in manifest.plan["variants"]]
    expected = {name: list(manifest.plan["seeds"]) for name in variants}
    by_id = {run.id: run for run in runs}
    by_name = {run.name: run for run in runs}
    matched: list[Run] = []
    for job in manifest.jobs.values():
        if job.variant not in expected:  # e.g. Slurm's `--then` follow-up job
            continue
        run = _find(job, by_id, by_name)
        if run is None:
            run = _placeholder(job)
            if run is None:
                continue
        else:
            run.state = _state(run.state, job)
            run.gpu_count = run.gpu_count or (len(job.gpus.split(",")) if job.gpus else None)
        run.variant, run.seed = job.variant, job.seed
        matched.append(run)
    return matched, expected


def _find(job: JobRecord, by_id: dict[str, Run], by_name: dict[str, Run]) -> Run | None:
    """The W&B run of the job's latest try that has one."""
    if job.wandb_id in by_id:
        return by_id[job.wandb_id]
    if job.wandb_name in by_name:
        return by_name[job.wandb_name]
    for earlier in reversed(job.tries):
        if earlier.get("wandb_id") in by_id:
            return by_id[earlier["wandb_id"]]
    return None


def _state(wandb_state: str, job: JobRecord) -> str:
    """W&B's state, corrected by what the harness saw: a run W&B thinks is running whose job has
    ended was killed without saying so; one W&B thinks stale whose job still runs is alive."""
    if wandb_state == RUNNING and job.state not in harness.ACTIVE_STATES:
        return FINISHED if job.state == harness.COMPLETED else CRASHED
    if wandb_state == CRASHED and job.state == harness.RUNNING:
        return RUNNING
    return wandb_state


def _placeholder(job: JobRecord) -> Run | None:
    """A run with no data for a job that is running or ended badly; None for a job not started
    or completed without a W&B run to show (both count as missing)."""
    if job.state in (harness.PENDING, harness.COMPLETED):
        return None
    state = RUNNING if job.state in harness.ACTIVE_STATES else CRASHED
    return Run(
        id=f"job:{job.id}",
        name=job.wandb_name or job.id,
        state=state,
        config={},
        summary={},
        history=pd.DataFrame({"_step": pd.Series(dtype="int64")}),
        source=job.log,
    )
