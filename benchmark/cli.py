"""The command line: launch a sweep (TRL's flags, no subcommand), or `status` / `resume` / `cancel` /
`report` / `compare` a run dir.

    benchmark --command "python -m trl_ppo.ppo --ppo_config.log_with wandb" --num-seeds 5 --workers 2
    benchmark status runs/2026-11-28T10-00-00-trl_ppo.ppo-log_with-wandb
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import tyro

from benchmark import engine
from benchmark.backends import BackendError, Scheduler, get_scheduler, name_wandb_run
from benchmark.engine import Sweep, fault_point
from benchmark.manifest import (
    COMPLETED,
    HELD,
    MANIFEST_NAME,
    PENDING,
    SUBMITTED_STATES,
    FollowUpRecord,
    JobRecord,
    Manifest,
    ManifestError,
    RunDirBusy,
    run_dir_owner,
)
from benchmark.plan import ArraySettings, LaunchRequest, Plan, PlanError, make_plan, variant_folder
from benchmark.redact import Redactor, referenced_secrets
from benchmark.tags import add_worktree
from benchmark.view import Group, Repeatable, flag, parse_args, say, say_error, say_note, status_table


# The field types are spelled so that tyro checks the defaults without importing typeguard, which
# would add a third to the start-up time of every launch: `Optional[X]`, not `X | None`, and a bare
# `tuple` (of strings, to tyro) for the repeatable flags. No class docstrings: tyro would run them through
# docstring_parser, a third of the parse time; the groups' titles come from the field names in LaunchArgs.
@dataclass
class LocalPoolArgs:
    gpus: Annotated[Optional[str], flag("IDS", "CUDA_VISIBLE_DEVICES, else nvidia-smi, else none")] = None
    """GPU ids for the local pool, e.g. 0,1,2"""
    gpus_per_job: int = 1
    """GPUs each local job gets (when GPUs exist)"""
    jobs_per_gpu: int = 1
    """local jobs allowed to share one GPU"""
    grace_period: float = 10.0
    """seconds a stopped job gets between SIGTERM and SIGKILL"""


@dataclass
class SlurmArgs:
    slurm_template_path: Annotated[
        Optional[str], flag("PATH", "the local pool; with --backend slurm, the shipped trl.slurm_template")
    ] = None
    """a jinja2 Slurm template: run the jobs as Slurm job arrays, submitted with sbatch"""
    slurm_gpus_per_task: Annotated[Optional[int], flag("INT")] = 1
    """GPUs per Slurm task"""
    slurm_total_cpus: Annotated[Optional[int], flag("INT")] = 50
    """CPUs of one job, split over its GPUs (the template's cpus_per_gpu)"""
    slurm_ntasks: Annotated[Optional[int], flag("INT")] = 1
    """Slurm tasks per job"""
    slurm_nodes: Annotated[Optional[int], flag("INT", "no --nodes line")] = None
    """Slurm nodes per job"""
    slurm_partition: Annotated[Optional[str], flag("NAME", "the cluster's default")] = None
    """Slurm partition"""
    slurm_time: Annotated[Optional[str], flag("TIME", "the partition's limit")] = None
    """Slurm time limit, e.g. 2:00:00"""
    slurm_mem: Annotated[Optional[str], flag("SIZE", "the cluster's default")] = None
    """Slurm memory per node, e.g. 64G"""
    slurm_extra: Annotated[tuple, Repeatable, flag("OPTION")] = ()
    """one more #SBATCH option, e.g. --constraint=h100"""
    slurm_setup: Annotated[tuple, Repeatable, flag("LINE")] = ()
    """a shell line run before the command, e.g. 'module load cuda/12.1'"""
    then: Annotated[Optional[str], flag("COMMAND", "none")] = None
    """a follow-up command (e.g. the report) that runs after every task has ended"""
    wait: bool = False
    """stay until every task has ended, with a live view; exit non-zero if any failed (submitit too)"""
    poll_interval: float = 5.0
    """seconds between state checks while waiting"""


@dataclass
class SubmititArgs:
    submitit_cluster: Literal["auto", "slurm", "local"] = "auto"
    """submitit's executor (with --backend submitit; the --slurm-* flags apply, its own batch script replaces the
    template): auto (Slurm where srun exists), slurm, or local"""


@dataclass
class WandbArgs:
    auto_tag: bool = True
    """add the git tag (and `pr-N` when known locally) to each job's WANDB_TAGS"""
    pr: Annotated[Optional[int], flag("N", "GITHUB_REF's or CI_MERGE_REQUEST_IID's, if any")] = None
    """the pull request number to tag runs with (`pr-N`)"""


@dataclass
class LaunchArgs:
    command: Annotated[tuple, Repeatable, flag("CMD")] = ()
    """the command to run; repeat the flag for variants (`name=CMD` names one explicitly)"""
    num_seeds: int = 3
    """the number of seeds to run each command with"""
    start_seed: int = 1
    """the first seed"""
    seed_flag: str = "--seed"
    """the flag appended to each command with its seed"""
    workers: int = 0
    """jobs at once (Slurm: tasks of each array at once); 0 runs nothing, as in TRL: it prints the commands, or
    with a Slurm template writes the scripts under the run dir and submits nothing"""
    backend: Literal["auto", "local", "slurm", "submitit"] = "auto"
    """where jobs run; auto: Slurm when --slurm-template-path is given, else the local pool"""
    ref: Annotated[tuple, Repeatable, flag("REF")] = ()
    """run the command at this git ref too: a variant per ref, named after its `git describe`, run in a worktree of
    its own under the run dir with PYTHONPATH set to it"""
    max_retries: int = 0
    """run a failed job again up to this many times (Slurm and submitit: under --wait)"""
    run_dir: Annotated[Optional[Path], flag("DIR", "runs/<UTC time>-<name>")] = None
    """where the manifest, logs and scripts go"""
    dry_run: bool = False
    """print the plan (commands, GPUs, logs, rendered scripts) and start nothing"""
    local_pool: Annotated[LocalPoolArgs, Group] = dataclasses.field(default_factory=LocalPoolArgs)
    slurm: Annotated[SlurmArgs, Group] = dataclasses.field(default_factory=SlurmArgs)
    submitit: Annotated[SubmititArgs, Group] = dataclasses.field(default_factory=SubmititArgs)
    wandb: Annotated[WandbArgs, Group, tyro.conf.arg(name="W&B")] = dataclasses.field(default_factory=WandbArgs)

    def request(self) -> LaunchRequest:
        """The flags of every group, by name, as the plan takes them."""
        groups = [self, *(g for f in dataclasses.fields(self) if dataclasses.is_dataclass(g := getattr(self, f.name)))]
        given = {f.name: getattr(group, f.name) for group in groups for f in dataclasses.fields(group)}
        return LaunchRequest(**{f.name: given[f.name] for f in dataclasses.fields(LaunchRequest)})


@dataclass
class RunDirArgs:
    run_dir: Annotated[Path, tyro.conf.Positional, flag("RUN_DIR")]
    """a run dir made by `benchmark`"""


@dataclass
class StatusArgs(RunDirArgs):
    all: bool = False
    """list every job; by default the counts per variant and state, then only the jobs not COMPLETED"""


@dataclass
class ResumeArgs(RunDirArgs):
    workers: Annotated[Optional[int], flag("INT", "as launched")] = None
    """jobs at once"""
    max_retries: Annotated[Optional[int], flag("INT", "as launched")] = None
    """retries of a failed job"""


def _default_run_dir(name: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y-%m-%dT%H-%M-%S', time.gmtime())}-{name}"


def launch(args: LaunchArgs, argv: list[str]) -> int:
    plan, secrets = make_plan(args.request(), argv, Redactor())
    # Inline secrets reach the jobs through the environment; only `"$NAME"` is ever stored.
    os.environ.update(secrets)
    jobs = plan.jobs()
    if plan.backend.name == "local" and args.workers == 0:
        for job in jobs:  # TRL's behaviour: print the commands, run nothing
            print(job.command)
        return 0
    records = [JobRecord.from_job(job, log="") for job in jobs]
    for record in records:  # named now, so that --dry-run shows the W&B runs a launch would make
        name_wandb_run(record)
    then = plan.backend.then if isinstance(plan.backend, ArraySettings) else None
    followup = FollowUpRecord(command=then) if then else None
    run_dir = args.run_dir or _default_run_dir(variant_folder(plan.variants[0].name))
    scheduler = get_scheduler(plan, run_dir)
    # Describing renders every script: a bad template stops here, before anything is written.
    description = scheduler.describe(records)
    for note in plan.notes():
        say(note)
    for warning in plan.missing_programs():
        say_note(warning)
    if args.dry_run:
        say(description)
        return 0
    if plan.backend.name == "slurm" and plan.backend.workers == 0:
        return _write_scripts(scheduler, records, run_dir)

    manifest = Manifest.create(run_dir, plan, records, followup)
    say(f"run dir {run_dir}: {len(plan.variants)} variant(s) x {len(plan.seeds)} seed(s)")
    fault_point("planned")
    return _run(Sweep(manifest, scheduler))


def _write_scripts(scheduler: Scheduler, records: list[JobRecord], run_dir: Path) -> int:
    """`--workers 0` on Slurm, as TRL's benchmark.py with a template: the scripts are written, nothing is submitted,
    and no manifest is made (`status` and `resume` say the run dir holds none)."""
    from benchmark.backends.slurm import SlurmBackend  # here, as in get_scheduler: a local launch never loads it

    assert isinstance(scheduler, SlurmBackend)
    if (run_dir / MANIFEST_NAME).exists():
        raise PlanError(f"{run_dir} holds a run already: give --workers 0 another --run-dir")
    _check_out_refs(scheduler.plan, run_dir)  # the scripts of `--ref` variants run in their worktrees
    for line in scheduler.write_scripts(records):
        say_note(line)
    settings = scheduler.settings
    ignored = " and ".join(flag for flag, given in (("--wait", settings.wait), ("--then", settings.then)) if given)
    say("nothing submitted: --workers 0 writes the scripts only, as TRL's benchmark.py did; --workers N submits them "
        f"(N tasks of each variant at once) and records the run{f'; {ignored} ignored' if ignored else ''}")
    return 0


def _run(sweep: Sweep) -> int:
    _check_out_refs(sweep.manifest.plan, sweep.manifest.run_dir)
    code = sweep.run()
    say(f"status: benchmark status {sweep.manifest.run_dir}")
    return code


def _check_out_refs(plan: Plan, run_dir: Path) -> None:
    """A worktree for each `--ref` variant, made once (a resume finds it there)."""
    for variant in plan.variants:
        path = plan.workdir(run_dir, variant.name)
        if variant.commit and not path.exists():
            if problem := add_worktree(plan.cwd, str(path), variant.commit):
                raise PlanError(f"{variant.name}: cannot check out {variant.commit} at {path}: {problem}")
            say(f"{variant.name}: {variant.commit[:12]} checked out at {path}")


def status(args: StatusArgs) -> int:
    manifest = Manifest.load(args.run_dir)
    notes = engine.current(manifest, get_scheduler(manifest.plan, manifest.run_dir))
    # Not through say(): the lines come aligned and coloured, and rich would wrap them to the terminal.
    print(status_table(manifest.records(), args.run_dir, every_job=args.all), flush=True)
    for note in notes:
        say(note)
    return 0


def resume(args: ResumeArgs) -> int:
    """Run every job that has not completed; adopt, rather than rerun, what a dead harness left running."""
    manifest = Manifest.load(args.run_dir, own=True)
    plan = manifest.plan
    if args.max_retries is not None:
        if args.max_retries < 0:
            raise PlanError(f"--max-retries must not be negative, got {args.max_retries}")
        plan = dataclasses.replace(plan, max_retries=args.max_retries)
    if args.workers is not None:
        if args.workers < 1:
            raise PlanError(f"resume --workers must be at least 1, got {args.workers}")
        plan = dataclasses.replace(plan, backend=dataclasses.replace(plan.backend, workers=args.workers))
    manifest.plan = plan  # for this resume only: the manifest keeps the launch's plan
    sweep = Sweep(manifest, get_scheduler(plan, manifest.run_dir))
    sweep.recover()
    sweep.rerun_unfinished()
    jobs = list(manifest.jobs.values())
    todo = [r for r in jobs if r.state == PENDING]
    held = [r for r in manifest.records() if r.state == HELD]
    submitted = [r for r in jobs if r.state in SUBMITTED_STATES and r.state != HELD]
    if submitted:
        shown = ", ".join(r.id for r in submitted[:10]) + (f" and {len(submitted) - 10} more" if len(submitted) > 10
                                                           else "")
        say(f"left alone, still queued or running: {shown}")
    if held:
        say(f"releasing {len(held)} job(s) a harness left held")
    if not todo and not held and not (sweep.waiting and submitted):
        say(f"nothing to resume: {sum(r.state == COMPLETED for r in jobs)} of {len(jobs)} jobs completed")
        return 0
    _warn_missing_secrets(manifest)
    if todo:
        say(f"resuming {len(todo)} of {len(jobs)} jobs")
    return _run(sweep)


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
    """Ask the live harness to stop its sweep; with none, stop the run's jobs here."""
    try:
        manifest = Manifest.load(args.run_dir, own=True)
    except RunDirBusy:
        owner = run_dir_owner(args.run_dir)
        if owner is None:  # it ended in the meantime
            return cancel(args)
        os.kill(owner[0], signal.SIGUSR1)
        say(f"asked the harness (pid {owner[0]}) to stop; it cancels the run's jobs")
        return 0
    cancelled = engine.cancel(manifest, get_scheduler(manifest.plan, manifest.run_dir))
    say(f"cancelled {len(cancelled)} job(s)")
    return 0


_LAUNCH_DESCRIPTION = """Run a command across seeds (and variants), locally or on Slurm, and record every job.

subcommands (benchmark SUBCOMMAND --help says more):
  status RUN_DIR   counts per variant and state, then every job not COMPLETED
  resume RUN_DIR   run the jobs not COMPLETED; adopt, never rerun, what is still queued or running
  cancel RUN_DIR   stop the run's jobs (through its live harness, else directly)
  report           seed-aggregated curves, verdicts and a page from W&B or TensorBoard runs
  compare          is the candidate better than the baseline? a verdict per metric"""
_LAUNCH_EXAMPLES = """\
  # TRL's line: 3 seeds on the local pool, 2 jobs (one GPU each, when there are GPUs) at once
  benchmark --command "python -m trl_ppo.ppo --ppo_config.log_with wandb" --num-seeds 3 --workers 2
  # two variants x 5 seeds as Slurm job arrays (the shipped template), staying to watch them end
  benchmark --command "base=python -m trl_ppo.ppo" --command "peft=python -m trl_ppo.ppo --use_peft" \\
      --num-seeds 5 --workers 10 --backend slurm --slurm-gpus-per-task 1 --slurm-total-cpus 12 --wait
  # the rendered Slurm scripts and every job's command, starting nothing
  benchmark --command "python train.py --lr 3e-4" --num-seeds 2 --backend slurm --dry-run
"""


@dataclass(frozen=True)
class Subcommand:
    args: type
    handler: Callable[[Any], int]
    description: str
    examples: str


_SUBCOMMANDS = {
    "status": Subcommand(
        StatusArgs, status, "How the jobs of a run dir stand: counts per variant and state, then the jobs not "
        "COMPLETED (with their logs' paths).",
        "  benchmark status runs/2026-12-05T10-00-00-trl_ppo.ppo-log_with-wandb\n  benchmark status RUN_DIR --all\n"),
    "resume": Subcommand(
        ResumeArgs, resume, "Run the jobs of a run dir that have not completed; what a dead harness left queued or "
        "running is adopted and watched, never run twice.",
        "  benchmark resume RUN_DIR\n  benchmark resume RUN_DIR --workers 4 --max-retries 1\n"),
    "cancel": Subcommand(
        RunDirArgs, cancel, "Stop the jobs of a run dir: through its live harness when one runs, else here; they "
        "are recorded CANCELLED.",
        "  benchmark cancel RUN_DIR\n  benchmark cancel runs/2026-12-05T10-00-00-peft   # `benchmark resume` runs "
        "them again later\n"),
}


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
            sub = _SUBCOMMANDS[argv[0]]
            return sub.handler(parse_args(sub.args, argv[1:], f"benchmark {argv[0]}", sub.examples, sub.description))
        return launch(parse_args(LaunchArgs, argv, "benchmark", _LAUNCH_EXAMPLES, _LAUNCH_DESCRIPTION), argv)
    except (PlanError, ManifestError, BackendError) as error:
        say_error(f"error: {error}")
        return 2
    except OSError as error:  # an unreadable run dir, a full disk: the system's words, no traceback
        if isinstance(error, BrokenPipeError):  # `benchmark status RUN | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        where = f" ({error.filename})" if error.filename else ""
        say_error(f"error: {error.strerror or error}{where}")
        return 2
    except KeyboardInterrupt:
        say_error("interrupted")
        return 130
