"""A harness run dir as a source: which variants and seeds were expected, and what became of each.

The manifest (`benchmark.manifest`) knows every job's variant, seed and state, and the W&B run id
and name the harness gave it. Runs found by the other sources are matched to jobs by that id or
name; a job whose id reached no run (a template that exports none of the harness's per-task
variables, as TRL's own does not) is matched by W&B group (the variant, which the harness puts in
sbatch's environment) and config seed. Runs of other sweeps lying in the same wandb folder match no
job and are left out. A job with no W&B run yet is still counted: running, crashed, or (pending, or
its data not found) missing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark import manifest as harness
from benchmark import workload
from benchmark.manifest import JobRecord, Manifest
from benchmark.report import offline
from benchmark.report.runs import CRASHED, FINISHED, RUNNING, Run, config_value, value_matches

_NOT_STARTED = {harness.PENDING, harness.SUBMITTING, harness.HELD, harness.QUEUED, harness.NOT_SUBMITTED}


def run_files(manifest: Manifest) -> list[Path]:
    """The sweep's offline run files. wandb writes `./wandb` under the jobs' working directory, which the
    plan records (or a `--ref` variant's worktree; a WANDB_DIR inside the run dir is found too), and names
    each file after its run's id: a shared folder is narrowed down to the ids the harness gave its jobs
    before anything is decoded. When a job that started has none of its ids there, its run has an id the
    harness never knew, so every run there is read, for matching by group and seed."""
    plan = manifest.plan
    worktrees = [plan.workdir(manifest.run_dir, v.name) for v in plan.variants if v.commit]
    folders = dict.fromkeys([manifest.run_dir, Path(plan.cwd), *worktrees])
    files = [path for folder in folders for path in offline.find_run_files(folder)]
    on_disk = {offline.file_id(path) for path in files}
    jobs = manifest.jobs.values()
    if any(job.state not in _NOT_STARTED and not _ids(job) & on_disk for job in jobs):
        return files
    ours = {i for job in jobs for i in _ids(job)}
    return [path for path in files if offline.file_id(path) in ours]


def match_jobs(manifest: Manifest, runs: list[Run]) -> tuple[list[Run], dict[str, list[int]]]:
    """The sweep's runs, each tagged with its job's variant and seed, one per job (its latest try),
    plus a placeholder for each running or failed job that has no W&B run; and the seeds expected
    per variant."""
    expected = {variant.name: list(manifest.plan.seeds) for variant in manifest.plan.variants}
    by_id = {run.id: run for run in runs}
    by_name = {run.name: run for run in runs}
    by_job = {job.id: run for job in manifest.jobs.values() if (run := _find(job, by_id, by_name))}
    # Only then by group and seed, so that no run a later job names by id is taken first.
    taken = {run.id for run in by_job.values()}
    unclaimed = [run for run in runs if run.id not in taken]
    for job in manifest.jobs.values():
        if job.id not in by_job and (run := _by_group_and_seed(job, unclaimed)):
            by_job[job.id] = run
            unclaimed.remove(run)
    matched: list[Run] = []
    for job in manifest.jobs.values():
        run = by_job.get(job.id)
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


def _ids(job: JobRecord) -> set[str]:
    """The W&B run ids the harness gave a job, every try included."""
    return {i for i in (job.wandb_id, *(t.get("wandb_id") for t in job.tries)) if i}


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


def _by_group_and_seed(job: JobRecord, runs: list[Run]) -> Run | None:
    """A run of the job's variant (its W&B group) and seed (in its config). Of several (the job's
    tries), the last one listed: both sources list runs oldest first (offline folders are named by
    start time, the W&B API orders by creation), so that is the latest try."""
    seed = str(job.seed)
    candidates = [
        run
        for run in runs
        # A TensorBoard run knows its seed from its folder's name, not from a config.
        if run.group == job.variant and (run.seed == job.seed
                                         or value_matches(config_value(run.config, workload.SEED_KEY), seed))
    ]
    return candidates[-1] if candidates else None


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
    if job.state in _NOT_STARTED - {harness.NOT_SUBMITTED} or job.state == harness.COMPLETED:
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
