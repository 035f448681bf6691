"""submitit backend: the plan run through submitit's executor, for users who prefer its job handles.

One `executor.map_array` per variant, one task per seed, driven by the sweep engine: on Slurm one
job array per variant as in the slurm backend, but with submitit's batch script instead of our
template (`SubmititSlurm`); with cluster "local", submitit's local executor, which starts every task
at submission and knows no hold or dependency (`SubmititLocal`). The records get submitit's job ids
("123_4" on Slurm, the pid of the task's controller locally) and log files.

Each task runs its command through `submitit.helpers.CommandFunction` and writes the command's exit
code to RUN_DIR/exit/<job id>: the Slurm task itself ends with 1 whatever the command returned.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError, JobPaths

from benchmark.backends import BackendError, Scheduler, task_env, variant_env
from benchmark.backends.slurm import SlurmArrays
from benchmark.manifest import LOST, RUNNING, JobRecord, Record, exit_file
from benchmark.plan import Plan, PlanError, SubmititSettings
from benchmark.procs import is_alive, process_start, stop_process_trees

# Without --slurm-time, submitit asks Slurm for 5 minutes: a sweep should know it.
_NO_TIME_NOTE = "no --slurm-time: submitit asks Slurm for its default limit, 5 minutes"
# submitit's local executor stops a task after 2 minutes unless told otherwise; like the local
# backend, we set no limit (a year).
_LOCAL_TIMEOUT_MIN = 365 * 24 * 60


@dataclass(frozen=True)
class SeedCommand:
    """What each array task runs (pickled by submitit, called in the job): one seed's command."""

    cwd: str
    run_dir: str
    env: dict[str, str]  # the variant's variables

    def __call__(self, command: str, env: dict[str, str]) -> str:
        job = submitit.JobEnvironment()
        code = 0
        try:
            run = submitit.helpers.CommandFunction(["bash", "-c", command], cwd=self.cwd,
                                                   env=os.environ | self.env | env)
            return run()
        except FailedJobError as error:
            returncode = getattr(error.__cause__, "returncode", 1)
            # A command killed by a signal reads as the shell reports it: 128 + the signal.
            code = 128 - returncode if returncode < 0 else returncode
            raise
        finally:
            if job.global_rank == 0:  # every rank runs the command; one exit code per task is kept
                path = exit_file(Path(self.run_dir), job.job_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".tmp").write_text(f"{code}\n")
                path.with_suffix(".tmp").rename(path)


def executor_parameters(settings: SubmititSettings, variant: str, tasks: int) -> dict[str, Any]:
    """`AutoExecutor.update_parameters` keywords for one variant's array, from the plan's settings."""
    nodes = settings.nodes or 1
    if settings.ntasks % nodes:
        raise PlanError(f"submitit runs as many tasks on every node: --slurm-ntasks {settings.ntasks} "
                        f"is not a multiple of --slurm-nodes {nodes}")
    parameters: dict[str, Any] = {
        "name": variant, "nodes": nodes, "tasks_per_node": settings.ntasks // nodes, "stderr_to_stdout": True,
    }
    if settings.cluster == "local":
        return parameters | {"local_setup": list(settings.setup), "timeout_min": _LOCAL_TIMEOUT_MIN}
    gpus, ntasks = settings.gpus_per_task, settings.ntasks
    if gpus:
        cpus_per_gpu = math.ceil(settings.total_cpus / (gpus * ntasks))
        parameters |= {"slurm_gpus_per_task": gpus, "slurm_cpus_per_gpu": cpus_per_gpu}
    else:
        parameters["cpus_per_task"] = math.ceil(settings.total_cpus / ntasks)
    # Held until the manifest holds every job id, as the slurm backend does; the time limit goes
    # through as Slurm writes it (submitit's own `time` takes minutes only).
    extra: dict[str, Any] = {"hold": True} | _sbatch_options(settings.extra)
    if settings.time:
        extra["time"] = settings.time
    return parameters | {
        "slurm_partition": settings.partition,
        "slurm_mem": settings.mem,
        "slurm_setup": list(settings.setup),
        "slurm_array_parallelism": settings.workers or tasks,
        "slurm_additional_parameters": extra,
    }


def _sbatch_options(extra: tuple[str, ...]) -> dict[str, Any]:
    """`--slurm-extra` options ("--constraint=h100", "--exclusive") as submitit's additional parameters."""
    options: dict[str, Any] = {}
    for option in extra:
        name, eq, value = option.partition("=")
        if not name.startswith("--"):
            raise PlanError(f"--slurm-extra {option!r}: submitit takes long options only, e.g. --constraint=h100")
        options[name[2:]] = value if eq else True
    return options


class _SubmititArrays(Scheduler):
    """Preparing and submitting an array through submitit, the same on both clusters."""

    settings: SubmititSettings

    def __init__(self, plan: Plan, run_dir: Path) -> None:
        super().__init__(plan, run_dir)
        assert isinstance(plan.backend, SubmititSettings)
        self.settings = plan.backend

    def prepare(self, records: list[JobRecord]) -> dict[str, Any]:
        return executor_parameters(self.settings, records[0].variant, len(records))

    def describe(self, records: list[JobRecord]) -> str:
        lines = [f"# submitit, {self.settings.cluster} executor, folder {self.run_dir / 'submitit'}"]
        if self.settings.cluster == "slurm" and not self.settings.time:
            lines.append(f"# {_NO_TIME_NOTE}")
        for group in self.batches(records, []):
            lines.append(f"# {group[0].variant}: map_array over seeds {[r.seed for r in group]}, "
                         f"parameters {self.prepare(group)}")
            lines += [record.command for record in group]
        if self.settings.then:
            lines.append(f"# then, after every task: {self.settings.then}")
        return "\n".join(lines)

    def submit(self, records: list[JobRecord], token: str, prepared: Any, exclude: list[str]) -> list[str]:
        run_dir, variant = self.run_dir.resolve(), records[0].variant
        executor = submitit.AutoExecutor(folder=run_dir / "submitit", cluster=self.settings.cluster)
        if self.settings.cluster == "slurm":
            extra = prepared["slurm_additional_parameters"] | {"comment": token}
            if exclude:
                extra["exclude"] = ",".join(exclude)
            prepared = prepared | {"slurm_additional_parameters": extra}
        executor.update_parameters(**prepared)
        task = SeedCommand(str(self.plan.workdir(run_dir, variant)), str(run_dir),
                           variant_env(self.plan, run_dir, variant, os.environ))
        try:
            jobs = executor.map_array(task, [r.command for r in records], [task_env(r, os.environ) for r in records])
        except (FailedJobError, FailedSubmissionError) as error:
            raise BackendError(str(error).strip()) from None
        for record, job in zip(records, jobs, strict=True):
            record.scheduler_id, record.log = job.job_id, os.path.relpath(job.paths.stdout, run_dir)
        return [f"{variant}: submitted {len(records)} task(s) through submitit ({jobs[0].job_id} ...)"]


class SubmititSlurm(_SubmititArrays, SlurmArrays):
    """submitit on Slurm: finding, states, release, the follow-up job and cancelling as the slurm backend's."""

    def notes(self) -> list[str]:
        return [] if self.settings.time else [f"note: {_NO_TIME_NOTE}"]

    def adopt(self, records: list[Record], array: str) -> None:
        if len(records) == 1 and isinstance(records[0], JobRecord):  # submitit submits a lone task as a plain job
            records[0].scheduler_id = array
        else:
            super().adopt(records, array)

    def find(self, records: list[Record], token: str) -> bool:
        if not SlurmArrays.find(self, records, token):
            return False
        run_dir = self.run_dir.resolve()
        for record in records:
            if isinstance(record, JobRecord):  # submitit's log of the task, as `submit` would have named it
                paths = JobPaths(run_dir / "submitit", job_id=record.scheduler_id, task_id=0)
                record.log = os.path.relpath(paths.stdout, run_dir)
        return True


class SubmititLocal(_SubmititArrays):
    """submitit's local executor: each task runs under a controller process on this machine, started at
    submission. A harness killed between submitting and recording leaves tasks it cannot find again:
    they are submitted again (at least once, not exactly once, on this executor)."""

    def submit(self, records: list[JobRecord], token: str, prepared: Any, exclude: list[str]) -> list[str]:
        lines = super().submit(records, token, prepared, exclude)
        for record in records:
            # The job id is the pid of its controller.
            record.pid = int(record.scheduler_id or 0)
            record.pid_start = process_start(record.pid)
        return lines

    def poll(self, records: list[Record]) -> list[str]:
        for record in records:
            if not record.end_from_exit_file(self.run_dir):
                job = record if isinstance(record, JobRecord) else None
                alive = job is not None and is_alive(job.pid, job.pid_start)
                record.state = RUNNING if alive else LOST
        return []

    def cancel(self, records: list[Record], hurry: Callable[[], bool] | None = None) -> list[str]:
        # submitit's own cancel (SIGINT to the controller) would leave the command running: its
        # controller kills only the Python task above it. Every process of the task is stopped instead.
        alive = [r.pid for r in records if isinstance(r, JobRecord) and r.pid and is_alive(r.pid, r.pid_start)]
        stop_process_trees(alive, self.plan.grace_period, hurry)
        return [f"cancelled {len(records)} task(s)"]
