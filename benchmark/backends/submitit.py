"""submitit backend: the plan run through submitit's executor, for users who prefer its job handles.

One `executor.map_array` per variant, one task per seed: on Slurm, one job array per variant as in the
slurm backend, but with submitit's batch script instead of our template; without Slurm (or with
cluster "local"), submitit's local executor, which starts every task at once. The records get
submitit's job ids ("123_4" on Slurm, the controller's pid locally) and log files.

Each task runs its command through `submitit.helpers.CommandFunction` and writes the command's exit
code to RUN_DIR/exit/<job id>: the Slurm task itself ends with 1 whatever the command returned.
States come from sacct, through the slurm backend, on Slurm; locally from the pids and exit files.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from benchmark.backends.slurm import THEN, SlurmBackend, by_variant, run_slurm
from benchmark.manifest import (
    ACTIVE_STATES,
    CANCELLED,
    LOST,
    NOT_SUBMITTED,
    PENDING,
    RUNNING,
    JobRecord,
    Manifest,
)
from benchmark.plan import PlanError
from benchmark.procs import is_alive, process_start
from benchmark.tags import merge_wandb_tags
from benchmark.templates import EXIT_DIR
from benchmark.view import say, say_error

# Without --slurm-time, submitit asks Slurm for 5 minutes: a sweep should know it.
_NO_TIME_NOTE = "no --slurm-time: submitit asks Slurm for its default limit, 5 minutes"
# submitit's local executor stops a task after 2 minutes unless told otherwise; like the local
# backend, we set no limit (a year).
_LOCAL_TIMEOUT_MIN = 365 * 24 * 60


@dataclass(frozen=True)
class SeedCommand:
    """What each array task runs (pickled by submitit, called in the job): one seed's command."""

    cwd: str
    exit_dir: str
    env: dict[str, str]

    def __call__(self, command: str) -> str:
        job = submitit.JobEnvironment()
        code = 0
        try:
            run = submitit.helpers.CommandFunction(["bash", "-c", command], cwd=self.cwd, env=os.environ | self.env)
            return run()
        except FailedJobError as error:
            returncode = getattr(error.__cause__, "returncode", 1)
            # A command killed by a signal reads as the shell reports it: 128 + the signal.
            code = 128 - returncode if returncode < 0 else returncode
            raise
        finally:
            if job.global_rank == 0:  # every rank runs the command; one exit code per task is kept
                path = Path(self.exit_dir) / job.job_id
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".tmp").write_text(f"{code}\n")
                path.with_suffix(".tmp").rename(path)


def cluster(settings: dict[str, Any]) -> str:
    """"slurm" or "local": as set, else what submitit detects (Slurm when srun is on PATH)."""
    return settings["cluster"] or submitit.AutoExecutor.which()


def executor_parameters(settings: dict[str, Any], variant: str, tasks: int) -> dict[str, Any]:
    """`AutoExecutor.update_parameters` keywords for one variant's array, from the plan's settings."""
    nodes = settings["nodes"] or 1
    if settings["ntasks"] % nodes:
        raise PlanError(f"submitit runs as many tasks on every node: --slurm-ntasks {settings['ntasks']} "
                        f"is not a multiple of --slurm-nodes {nodes}")
    parameters: dict[str, Any] = {
        "name": variant, "nodes": nodes, "tasks_per_node": settings["ntasks"] // nodes, "stderr_to_stdout": True,
    }
    if cluster(settings) == "local":
        return parameters | {"local_setup": settings["setup"], "timeout_min": _LOCAL_TIMEOUT_MIN}
    gpus, ntasks = settings["gpus_per_task"], settings["ntasks"]
    if gpus:
        cpus_per_gpu = math.ceil(settings["total_cpus"] / (gpus * ntasks))
        parameters |= {"slurm_gpus_per_task": gpus, "slurm_cpus_per_gpu": cpus_per_gpu}
    else:
        parameters["cpus_per_task"] = math.ceil(settings["total_cpus"] / ntasks)
    # Held until the manifest holds every job id, as the slurm backend does; the time limit goes
    # through as Slurm writes it (submitit's own `time` takes minutes only).
    extra: dict[str, Any] = {"hold": True} | _sbatch_options(settings["extra"])
    if settings["time"]:
        extra["time"] = settings["time"]
    return parameters | {
        "slurm_partition": settings["partition"],
        "slurm_mem": settings["mem"],
        "slurm_setup": settings["setup"],
        "slurm_array_parallelism": settings["workers"] or tasks,
        "slurm_additional_parameters": extra,
    }


def _sbatch_options(extra: list[str]) -> dict[str, Any]:
    """`--slurm-extra` options ("--constraint=h100", "--exclusive") as submitit's additional parameters."""
    options: dict[str, Any] = {}
    for option in extra:
        name, eq, value = option.partition("=")
        if not name.startswith("--"):
            raise PlanError(f"--slurm-extra {option!r}: submitit takes long options only, e.g. --constraint=h100")
        options[name[2:]] = value if eq else True
    return options


class SubmititBackend(SlurmBackend):
    """Shares the slurm backend's waiting, and on Slurm its sacct reading and cancelling."""

    name = "submitit"

    def describe(self, run_dir: Path, plan: dict[str, Any], records: list[JobRecord]) -> str:
        settings = plan["submitit"]
        if settings["then"] and cluster(settings) == "local":
            raise PlanError("--then needs Slurm: submitit's local executor knows no dependencies")
        parts = [f"# submitit, {cluster(settings)} executor, folder {run_dir / 'submitit'}"]
        if cluster(settings) == "slurm" and not settings["time"]:
            parts.append(f"# {_NO_TIME_NOTE}")
        for variant, group in by_variant(records).items():
            parameters = executor_parameters(settings, variant, len(group))
            parts.append(f"# {variant}: map_array over seeds {[r.seed for r in group]}, parameters {parameters}")
            parts.extend(record.command for record in group)
        return "\n".join(parts)

    def launch(self, manifest: Manifest, ids: list[str]) -> int:
        settings = manifest.plan["submitit"]
        groups = by_variant([manifest.jobs[i] for i in ids])
        run_dir = manifest.run_dir.resolve()
        executor = submitit.AutoExecutor(folder=run_dir / "submitit", cluster=settings["cluster"])
        if executor.cluster == "slurm" and not settings["time"]:
            say(f"note: {_NO_TIME_NOTE}")
        env = {"BENCHMARK_RUN_DIR": str(run_dir)}
        if manifest.plan.get("wandb_tags"):
            env["WANDB_TAGS"] = merge_wandb_tags(os.environ.get("WANDB_TAGS", ""), manifest.plan["wandb_tags"])
        submitted, refused = [], []
        for variant, group in groups.items():
            executor.update_parameters(**executor_parameters(settings, variant, len(group)))
            task = SeedCommand(manifest.plan["cwd"], str(run_dir / EXIT_DIR),
                               env | {"BENCHMARK_VARIANT": variant, "WANDB_RUN_GROUP": variant})
            try:
                jobs = executor.map_array(task, [record.command for record in group])
            except (FailedJobError, FailedSubmissionError) as error:
                message = str(error).strip()
                for record in group:
                    record.state, record.message = NOT_SUBMITTED, message
                manifest.save(*group)
                refused.append(f"{variant}: {message}")
                continue
            for record, job in zip(group, jobs, strict=True):
                record.slurm_id, record.state = job.job_id, PENDING
                record.log = os.path.relpath(job.paths.stdout, run_dir)
                if executor.cluster == "local":  # started at once; the job id is the pid of its controller
                    record.pid, record.start = int(job.job_id), time.time()
                    record.pid_start = process_start(record.pid)
            manifest.save(*group)
            submitted.extend(record.slurm_id for record in group)
            say(f"{variant}: submitted {len(group)} task(s) through submitit ({jobs[0].job_id} ...)")
        arrays = sorted({i.split("_")[0] for i in submitted})
        then = manifest.jobs.get(THEN)
        if arrays and then and then.id in ids:
            arrays.append(_submit_then(manifest, then, arrays))
        if arrays and executor.cluster == "slurm":
            run_slurm(["scontrol", "release", ",".join(arrays)])
        for line in refused:
            say_error(f"error: not submitted: {line}")
        code = 1 if refused else 0
        if settings["wait"] and submitted:
            waited = [r.id for g in groups.values() for r in g if r.slurm_id]
            code = max(code, self.wait(manifest, waited + ([THEN] if then and then.slurm_id else [])))
        return code

    def refresh(self, manifest: Manifest) -> str | None:
        if cluster(manifest.plan["submitit"]) == "local":
            _refresh_local(manifest)
            return None
        active = [r for r in manifest.jobs.values() if r.slurm_id and r.state in ACTIVE_STATES]
        note = super().refresh(manifest)
        # sacct says 1 for any failed task; the command's own exit code is in the task's exit file.
        for record in active:
            if record.state not in ACTIVE_STATES and (code := _exit_code(manifest, record)) is not None:
                record.exit_code = code
        return note

    def cancel(self, manifest: Manifest) -> int:
        if cluster(manifest.plan["submitit"]) != "local":
            return super().cancel(manifest)
        _refresh_local(manifest)
        running = [r for r in manifest.jobs.values() if r.state == RUNNING]
        for record in running:
            # submitit's own cancel (SIGINT to the controller) would leave the command running: its
            # controller kills only the Python task above it. Every process of the task is stopped instead.
            if is_alive(record.pid, record.pid_start):
                for pid in _process_tree(record.pid or 0):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            record.state, record.end = CANCELLED, time.time()
        manifest.save(*running)
        say(f"cancelled {len(running)} task(s)")
        return 0


def _submit_then(manifest: Manifest, then: JobRecord, arrays: list[str]) -> str:
    """The follow-up command as one more submitit job, held, after every array has ended."""
    settings, run_dir = manifest.plan["submitit"], manifest.run_dir.resolve()
    # A fresh executor: the arrays' parameters (GPUs, array parallelism) must not carry over.
    executor = submitit.AutoExecutor(folder=run_dir / "submitit", cluster="slurm")
    dependency = {"hold": True, "dependency": f"afterany:{':'.join(arrays)}"}
    executor.update_parameters(
        name=THEN, slurm_partition=settings["partition"], slurm_setup=settings["setup"],
        slurm_additional_parameters=dependency | ({"time": settings["time"]} if settings["time"] else {}),
    )
    job = executor.submit(SeedCommand(manifest.plan["cwd"], str(run_dir / EXIT_DIR), {}), then.command)
    then.slurm_id, then.state, then.log = job.job_id, PENDING, os.path.relpath(job.paths.stdout, run_dir)
    manifest.save(then)
    say(f"then: submitted job {job.job_id} through submitit, after {len(arrays)} array(s)")
    return job.job_id


def _exit_code(manifest: Manifest, record: JobRecord) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((manifest.run_dir / EXIT_DIR / (record.slurm_id or "")).read_text())
    return None


def _refresh_local(manifest: Manifest) -> None:
    """Local tasks run from submission on: ended once their exit file is there, else running while
    their controller lives, else lost."""
    for record in manifest.jobs.values():
        if not record.slurm_id or record.state not in ACTIVE_STATES:
            continue
        if record.end_from_exit_file(manifest.run_dir / EXIT_DIR / record.slurm_id):
            continue
        if is_alive(record.pid, record.pid_start):
            record.state = RUNNING
        else:
            record.state = LOST


def _process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, parents first, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            fields = stat.read_bytes().rpartition(b")")[2].split()  # after the command name, which may hold spaces
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree = [pid]
    for parent in tree:  # grows while it is walked: breadth first
        tree.extend(children.get(parent, []))
    return tree
