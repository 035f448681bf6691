"""The command line: launch a sweep (TRL's flags, no subcommand), or `status` / `resume` / `cancel` /
`report` / `compare` a run dir.

    benchmark --command "python -m trl_ppo.ppo --ppo_config.log_with wandb" --num-seeds 5 --workers 2
    benchmark status runs/2026-11-28T10-00-00-trl_ppo.ppo-log_with-wandb
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

from benchmark.backends import Backend, BackendError, get_backend, name_wandb_run
from benchmark.backends.local import log_path
from benchmark.manifest import ACTIVE_STATES, COMPLETED, PENDING, FollowUpRecord, JobRecord, Manifest, ManifestError
from benchmark.plan import PlanError, make_plan
from benchmark.procs import claim_run_dir, live_harness
from benchmark.redact import Redactor, referenced_secrets
from benchmark.tags import add_worktree
from benchmark.view import say, say_error, status_table


# The field types are spelled so that tyro checks the defaults without importing typeguard, which
# would add a third to the start-up time of every launch: `Optional[X]`, not `X | None`, and a bare
# `tuple` (of strings, to tyro) for the repeatable flags.
@dataclass
class LaunchArgs:
    # No class docstring: tyro would run it through docstring_parser, a third of the parse time.
    # The --help description is given to tyro.cli instead.

    command: Annotated[tuple, tyro.conf.UseAppendAction] = ()
    """the command to run; repeat the flag for variants (`name=CMD` names one explicitly)"""
    num_seeds: int = 3
    """the number of seeds to run each command with"""
    start_seed: int = 1
    """the first seed"""
    workers: int = 0
    """jobs at once (local pool); 0 prints the commands and runs nothing, as in TRL"""
    auto_tag: bool = True
    """add the git tag (and `pr-N` when known locally) to WANDB_TAGS"""
    slurm_template_path: Optional[str] = None
    """a jinja2 Slurm template: submit job arrays with sbatch instead of running locally"""
    slurm_gpus_per_task: Optional[int] = 1
    """GPUs per Slurm task"""
    slurm_total_cpus: Optional[int] = 50
    """CPUs of one job, split over its GPUs (the template's cpus_per_gpu)"""
    slurm_ntasks: Optional[int] = 1
    """Slurm tasks per job"""
    slurm_nodes: Optional[int] = None
    """Slurm nodes per job"""
    ref: Annotated[tuple, tyro.conf.UseAppendAction] = ()
    """run the command at this git ref too (repeatable): a variant per ref, named after its `git describe`,
    run in a worktree of its own under the run dir with PYTHONPATH set to it"""
    seed_flag: str = "--seed"
    """the flag appended to each command with its seed"""
    dry_run: bool = False
    """print the plan (commands, GPUs, logs, rendered scripts) and start nothing"""
    run_dir: Optional[Path] = None
    """where the manifest, logs and scripts go (default: runs/<UTC time>-<name>)"""
    gpus: Optional[str] = None
    """GPU ids for the local pool, e.g. 0,1,2 (default: CUDA_VISIBLE_DEVICES, else nvidia-smi, else none)"""
    gpus_per_job: int = 1
    """GPUs each local job gets (when GPUs exist)"""
    jobs_per_gpu: int = 1
    """local jobs allowed to share one GPU"""
    max_retries: int = 0
    """run a failed job again up to this many times (Slurm and submitit: under --wait)"""
    pr: Optional[int] = None
    """the pull request number to tag runs with (`pr-N`)"""
    grace_period: float = 10.0
    """seconds a stopped job gets between SIGTERM and SIGKILL"""
    backend: Literal["auto", "local", "slurm", "submitit"] = "auto"
    """where jobs run; auto: Slurm when --slurm-template-path is given, else the local pool; submitit: the
    same plan through submitit's executor (the --slurm-* flags apply, its own batch script replaces the template)"""
    submitit_cluster: Literal["auto", "slurm", "local"] = "auto"
    """submitit's executor: auto (Slurm where srun exists), slurm, or local"""
    slurm_partition: Optional[str] = None
    """Slurm partition (default: the cluster's default)"""
    slurm_time: Optional[str] = None
    """Slurm time limit, e.g. 2:00:00"""
    slurm_mem: Optional[str] = None
    """Slurm memory per node, e.g. 64G"""
    slurm_extra: Annotated[tuple, tyro.conf.UseAppendAction] = ()
    """one more #SBATCH option, e.g. --constraint=h100 (repeatable)"""
    slurm_setup: Annotated[tuple, tyro.conf.UseAppendAction] = ()
    """a shell line run before the command, e.g. 'module load cuda/12.1' (repeatable)"""
    then: Optional[str] = None
    """Slurm: a follow-up command (e.g. the report) that runs after every task has ended"""
    wait: bool = False
    """Slurm: stay until every task has ended, with a live view; exit non-zero if any failed"""
    poll_interval: float = 5.0
    """Slurm: seconds between state checks while waiting"""


@dataclass
class RunDirArgs:
    run_dir: tyro.conf.Positional[Path]
    """a run dir made by `benchmark`"""


@dataclass
class ResumeArgs(RunDirArgs):
    workers: Optional[int] = None
    """jobs at once (default: as launched)"""
    max_retries: Optional[int] = None
    """retries of a failed job (default: as launched)"""


def _default_run_dir(name: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y-%m-%dT%H-%M-%S', time.gmtime())}-{name}"


def launch(args: LaunchArgs, argv: list[str]) -> int:
    plan, secrets = make_plan(args, argv, Redactor())
    # Inline secrets reach the jobs through the environment; only `"$NAME"` is ever stored.
    os.environ.update(secrets)
    jobs = plan.jobs()
    if plan.backend.name == "local" and args.workers == 0:
        for job in jobs:  # TRL's behaviour: print the commands, run nothing
            print(job.command)
        return 0
    records = [JobRecord.from_job(job, log_path(job.variant, job.seed, 1)) for job in jobs]
    for record in records:  # named now, so that --dry-run shows the W&B runs a launch would make
        name_wandb_run(record)
    followup = FollowUpRecord(command=args.then) if args.then else None
    run_dir = args.run_dir or _default_run_dir(plan.variants[0].name)
    backend = get_backend(plan)
    # Describing renders every script: a bad template stops here, before anything is written.
    description = backend.describe(run_dir, plan, records)
    if args.dry_run:
        say(description)
        return 0

    manifest = Manifest.create(run_dir, plan, records, followup)
    say(f"run dir {run_dir}: {len(plan.variants)} variant(s) x {len(plan.seeds)} seed(s)")
    return _run(backend, manifest, [r.id for r in records])


def _run(backend: Backend, manifest: Manifest, ids: list[str]) -> int:
    claim_run_dir(manifest.run_dir)
    _check_out_refs(manifest)
    code = backend.launch(manifest, ids)
    say(f"status: benchmark status {manifest.run_dir}")
    return code


def _check_out_refs(manifest: Manifest) -> None:
    """A worktree for each `--ref` variant, made once (a resume finds it there)."""
    for variant in manifest.plan.variants:
        path = manifest.plan.workdir(manifest.run_dir, variant.name)
        if variant.commit and not path.exists():
            if problem := add_worktree(manifest.plan.cwd, str(path), variant.commit):
                raise PlanError(f"{variant.name}: cannot check out {variant.commit} at {path}: {problem}")
            say(f"{variant.name}: {variant.commit[:12]} checked out at {path}")


def status(args: RunDirArgs) -> int:
    manifest = Manifest.load(args.run_dir)
    note = get_backend(manifest.plan).refresh(manifest)
    records = manifest.records()
    counts: dict[str, int] = {}
    for record in records:
        counts[record.state] = counts.get(record.state, 0) + 1
    title = f"{args.run_dir}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    say(status_table(records, args.run_dir, title))
    for record in records:
        if record.message:
            say(f"{record.id}: {record.message}")
    if note:
        say(note)
    return 0


def resume(args: ResumeArgs) -> int:
    manifest = Manifest.load(args.run_dir)
    harness = live_harness(manifest.run_dir)
    if harness is not None:
        raise PlanError(f"{args.run_dir} is still being run by pid {harness}: wait for it or cancel it first")
    plan = manifest.plan
    if args.max_retries is not None:
        plan = dataclasses.replace(plan, max_retries=args.max_retries)
    if args.workers is not None:
        plan = dataclasses.replace(plan, backend=dataclasses.replace(plan.backend, workers=args.workers))
    manifest.plan = plan  # for this resume only: the manifest keeps the launch's plan
    backend = get_backend(plan)
    states = {id(r): r.state for r in manifest.records()}
    backend.refresh(manifest)
    for record in manifest.records():
        ended_badly = record.state not in ACTIVE_STATES and record.state != COMPLETED
        if ended_badly and isinstance(record, JobRecord):
            record.archive_try()
        elif ended_badly and isinstance(record, FollowUpRecord):
            record.reset()
        if ended_badly or record.state != states[id(record)]:
            manifest.save(record)
    todo = [r for r in manifest.jobs.values() if _not_started(r)]
    still_running = [r.id for r in manifest.jobs.values() if r.state in ACTIVE_STATES and not _not_started(r)]
    if still_running:
        say(f"left alone, still pending or running: {', '.join(still_running)}")
    if not todo:
        say(f"nothing to resume: {len(manifest.jobs) - len(still_running)} jobs completed")
        return 0
    _warn_missing_secrets(manifest)
    say(f"resuming {len(todo)} of {len(manifest.jobs)} jobs")
    return _run(backend, manifest, [r.id for r in todo])


def _not_started(record: JobRecord) -> bool:
    """Neither run locally nor queued on Slurm (Slurm's PENDING means queued there)."""
    return record.state == PENDING and record.scheduler_id is None


def _warn_missing_secrets(manifest: Manifest) -> None:
    missing = {
        name
        for variant in manifest.plan.variants
        for name in referenced_secrets(variant.command)
        if name not in os.environ
    }
    if missing:
        say(f"warning: the commands use {', '.join(sorted(missing))}, which this environment lacks")


def cancel(args: RunDirArgs) -> int:
    manifest = Manifest.load(args.run_dir)
    return get_backend(manifest.plan).cancel(manifest)


_LAUNCH_DESCRIPTION = "Run a command across seeds (and variants), locally or on Slurm, and record every job."
_SUBCOMMANDS = {"status": (RunDirArgs, status), "resume": (ResumeArgs, resume), "cancel": (RunDirArgs, cancel)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "report":
            from benchmark.report import main as report_main

            return report_main(argv[1:])
        if argv and argv[0] == "compare":
            from benchmark.report.compare import main as compare_main

            return compare_main(argv[1:])
        if argv and argv[0] in _SUBCOMMANDS:
            cls, handler = _SUBCOMMANDS[argv[0]]
            return handler(tyro.cli(cls, args=argv[1:], prog=f"benchmark {argv[0]}"))
        args = tyro.cli(LaunchArgs, args=argv, prog="benchmark", description=_LAUNCH_DESCRIPTION)
        return launch(args, argv)
    except (PlanError, ManifestError, BackendError) as error:
        say_error(f"error: {error}")
        return 2
