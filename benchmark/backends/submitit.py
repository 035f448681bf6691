"""submitit backend: the plan run through submitit's executor, for users who prefer its job handles.

One `executor.map_array` per variant, one task per seed, in the array flow of array.py: on Slurm one
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from benchmark.backends import BackendError, settle_process, task_env, variant_env
from benchmark.backends.array import ArrayBackend
from benchmark.backends.slurm import SlurmArrays
from benchmark.manifest import ACTIVE_STATES, CANCELLED, RUNNING, JobRecord, Manifest, exit_file
from benchmark.plan import Plan, PlanError, SubmititSettings
from benchmark.procs import is_alive, process_start, stop_process_trees
from benchmark.view import say

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


class _SubmititArrays(ArrayBackend):
    """Preparing and submitting an array through submitit, the same on both clusters."""

    settings: SubmititSettings

    def prepare(self, run_dir: Path, plan: Plan, variant: str, records: list[JobRecord]) -> dict[str, Any]:
        return executor_parameters(self.settings, variant, len(records))

    def describe_array(self, run_dir: Path, variant: str, records: list[JobRecord], prepared: Any) -> list[str]:
        header = f"# {variant}: map_array over seeds {[r.seed for r in records]}, parameters {prepared}"
        return [header, *(record.command for record in records)]

    def describe(self, run_dir: Path, plan: Plan, records: list[JobRecord]) -> str:
        header = f"# submitit, {self.settings.cluster} executor, folder {run_dir / 'submitit'}"
        return "\n".join([header, super().describe(run_dir, plan, records)])

    def submit(
        self, manifest: Manifest, variant: str, records: list[JobRecord], prepared: Any, exclude: list[str]
    ) -> list[tuple[str, str]]:
        run_dir = manifest.run_dir.resolve()
        executor = submitit.AutoExecutor(folder=run_dir / "submitit", cluster=self.settings.cluster)
        if exclude:
            extra = prepared["slurm_additional_parameters"] | {"exclude": ",".join(exclude)}
            prepared = prepared | {"slurm_additional_parameters": extra}
        executor.update_parameters(**prepared)
        task = SeedCommand(str(manifest.plan.workdir(run_dir, variant)), str(run_dir),
                           variant_env(manifest.plan, run_dir, variant, os.environ))
        try:
            jobs = executor.map_array(task, [r.command for r in records], [task_env(r, os.environ) for r in records])
        except (FailedJobError, FailedSubmissionError) as error:
            raise BackendError(str(error).strip()) from None
        say(f"{variant}: submitted {len(records)} task(s) through submitit ({jobs[0].job_id} ...)")
        return [(job.job_id, os.path.relpath(job.paths.stdout, run_dir)) for job in jobs]


class SubmititSlurm(_SubmititArrays, SlurmArrays):
    """submitit on Slurm: states, release, the follow-up job and cancelling as the slurm backend's."""

    def launch(self, manifest: Manifest, ids: list[str]) -> int:
        if not self.settings.time:
            say(f"note: {_NO_TIME_NOTE}")
        return super().launch(manifest, ids)

    def describe(self, run_dir: Path, plan: Plan, records: list[JobRecord]) -> str:
        text = super().describe(run_dir, plan, records)
        return text if self.settings.time else f"# {_NO_TIME_NOTE}\n{text}"


class SubmititLocal(_SubmititArrays):
    """submitit's local executor: each task runs under a controller process on this machine."""

    def submit(
        self, manifest: Manifest, variant: str, records: list[JobRecord], prepared: Any, exclude: list[str]
    ) -> list[tuple[str, str]]:
        answer = super().submit(manifest, variant, records, prepared, exclude)
        for record, (job_id, _) in zip(records, answer, strict=True):
            # Started at once; the job id is the pid of its controller.
            record.start, record.pid_start = time.time(), process_start(int(job_id))
        return answer

    def refresh(self, manifest: Manifest) -> str | None:
        for record in manifest.jobs.values():
            if record.scheduler_id and record.state in ACTIVE_STATES:
                settle_process(manifest.run_dir, record)
        return None

    def cancel(self, manifest: Manifest) -> int:
        self.refresh(manifest)
        running = [r for r in manifest.jobs.values() if r.state == RUNNING]
        # submitit's own cancel (SIGINT to the controller) would leave the command running: its
        # controller kills only the Python task above it. Every process of the task is stopped instead.
        stop_process_trees([r.pid for r in running if r.pid and is_alive(r.pid, r.pid_start)],
                           manifest.plan.grace_period)
        for record in running:
            record.state, record.end = CANCELLED, time.time()
        manifest.save(*running)
        say(f"cancelled {len(running)} task(s)")
        return 0


