"""Slurm backend: one `sbatch` job array per variant, one array task per seed.

Each variant's script is rendered from a jinja2 template (benchmark/templates.py) and kept in the run
dir; it follows the array flow of array.py. `SlurmArrays` holds what the slurm and submitit backends
share on a Slurm cluster: the follow-up job, release, states from `sacct` (parsed by submitit's own
reader), else from `squeue` and the exit files every task writes, and `scancel`.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from benchmark import sbatch_script
from benchmark.backends import BackendError, task_env, variant_env
from benchmark.backends.array import ArrayBackend, array_id
from benchmark.manifest import (
    ACTIVE_STATES,
    CANCELLED,
    PENDING,
    FollowUpRecord,
    JobRecord,
    Manifest,
    Record,
    read_exit_file,
)
from benchmark.plan import ArraySettings, Plan, PlanError, SlurmSettings
from benchmark.redact import referenced_secrets
from benchmark.templates import TemplateError, render
from benchmark.view import say, say_error

_TIMEOUT_S = 60
# squeue's reasons for a pending job that no other job's end can lift: it never starts as submitted.
_STUCK_REASONS = {"BadConstraints", "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "InvalidQOS",
                  "InvalidAccount"}
_SACCT_FIELDS = "JobID,JobIDRaw,State,ExitCode,NodeList,Start,End"


class SlurmError(BackendError):
    """A Slurm command that failed; the message carries Slurm's own words."""


def run_slurm(argv: list[str], cwd: str | None = None, env: Mapping[str, str] | None = None) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, cwd=cwd, env=env)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: is Slurm installed and on PATH?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {_TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise SlurmError(f"{argv[0]} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
    return result.stdout


def parse_job_id(out: str) -> str:
    match = re.match(r"\d+", out.strip())
    if not match:
        raise SlurmError(f"sbatch answered {out.strip()!r}, not a job id")
    return match[0]


def _given(settings: ArraySettings, *names: str) -> list[str]:
    """`--NAME=VALUE` for each of these settings that the user gave."""
    return [f"--{name}={value}" for name in names if (value := getattr(settings, name))]


def explicit_options(settings: ArraySettings) -> list[str]:
    """The flags the user gave, for sbatch's command line: they override the script's #SBATCH lines, so
    they apply even to a template that hardcodes its own (TRL's says --partition=hopper-prod)."""
    return _given(settings, "partition", "time", "mem") + list(settings.extra)


def _arrays(records: list[Record]) -> list[str]:
    """The array jobs these tasks belong to, each once."""
    return sorted({array_id(r.scheduler_id or "") for r in records})


def ignored_directives(template: str, script: str, parsed: sbatch_script.BatchScript) -> list[str]:
    """A warning for each #SBATCH line of `script` (parsed) that sbatch will ignore, naming its template line."""
    if not parsed.ignored:
        return []
    template_lines, script_lines = Path(template).read_text().splitlines(), script.splitlines()
    blocks = difflib.SequenceMatcher(None, template_lines, script_lines, autojunk=False).get_opcodes()
    warnings = []
    for number, text in parsed.ignored:
        # The template line that rendered it: the same line, or the one in its place among changed lines.
        tag, i1, i2, j1, j2 = next(b for b in blocks if b[3] <= number - 1 < b[4])
        line = i1 + (number - 1 - j1) + 1 if tag == "equal" or i2 - i1 == j2 - j1 else i1 + 1
        warnings.append(f"warning: {template}:{line}: sbatch ignores '{text}': it comes after the script's "
                        "first command, and sbatch reads #SBATCH lines only before it")
    return warnings


def _when(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:  # "Unknown", "None" while a task has not started or ended
        return None


class SlurmArrays(ArrayBackend):
    """What both array backends do the same way on a Slurm cluster."""

    def submit_followup(self, manifest: Manifest, followup: FollowUpRecord, after: list[str]) -> None:
        """The follow-up command as one more job, held, after every array has ended however it ended."""
        command = "\n".join([*self.settings.setup, followup.command])
        (manifest.run_dir / "logs").mkdir(exist_ok=True)  # Slurm makes no folder for a log
        job_id = parse_job_id(run_slurm(
            ["sbatch", "--parsable", "--hold", f"--dependency=afterany:{':'.join(after)}", "--job-name=then",
             f"--output={manifest.run_dir.resolve() / 'logs' / 'then_%j.out'}",
             *_given(self.settings, "partition", "time"), "--wrap", command],
            cwd=manifest.plan.cwd, env=os.environ | {"BENCHMARK_RUN_DIR": str(manifest.run_dir.resolve())},
        ))
        followup.scheduler_id, followup.state, followup.log = job_id, PENDING, f"logs/then_{job_id}.out"
        say(f"then: submitted job {job_id}, after {len(after)} array(s)")

    def release(self, scheduler_ids: list[str]) -> None:
        try:
            run_slurm(["scontrol", "release", ",".join(scheduler_ids)])
        except SlurmError as error:
            # A job cancelled while held has finished; any other refusal leaves jobs held: say so.
            if "already finished" not in str(error):
                say_error(f"warning: {error}; release them by hand: scontrol release {','.join(scheduler_ids)}")

    def refresh(self, manifest: Manifest) -> str | None:
        active = [r for r in manifest.records() if r.scheduler_id and r.state in ACTIVE_STATES]
        if not active:
            return None
        notes = []
        try:
            run_slurm(["scontrol", "ping"])
        except SlurmError as error:
            notes.append(f"the Slurm controller is unreachable ({error}); states may be stale")
        queued = None
        try:
            _apply_sacct(active)
        except SlurmError as error:
            notes.append(f"sacct gave no states ({error}): reading squeue and the tasks' exit files instead")
            queued = _squeue(active)
            _apply_squeue(manifest.run_dir, active, queued)
        if pending := [r for r in active if r.state == PENDING]:
            with contextlib.suppress(SlurmError):  # the states stand; only the reasons are missing
                _note_stuck(pending, queued if queued is not None else _squeue(pending))
        # The command's own exit code is in its task's exit file (submitit's tasks end with 1 whatever it was).
        for record in (r for r in active if r.state not in ACTIVE_STATES):
            if written := read_exit_file(manifest.run_dir, record.scheduler_id or ""):
                record.exit_code = written[0]
        return "\n".join(notes) or None

    def cancel(self, manifest: Manifest) -> int:
        active = [r for r in manifest.records() if r.scheduler_id and r.state in ACTIVE_STATES]
        arrays = _arrays(active)
        if not arrays:
            say("nothing to cancel: no task of this run is pending or running")
            return 0
        run_slurm(["scancel", *arrays])
        for record in active:
            record.state, record.end = CANCELLED, record.end or time.time()
        manifest.save(*active)
        say(f"cancelled {len(active)} task(s) in job(s) {', '.join(arrays)}")
        return 0


@dataclass(frozen=True)
class _Script:
    text: str
    parsed: sbatch_script.BatchScript
    logs: list[Path]  # the log patterns it sets, absolute


class SlurmBackend(SlurmArrays):
    parallel_submit = True

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        assert isinstance(plan.backend, SlurmSettings)
        self.template = plan.backend.template

    def prepare(self, run_dir: Path, plan: Plan, variant: str, records: list[JobRecord]) -> _Script:
        command = plan.command_of(variant)
        per_task = [task_env(record, os.environ) for record in records]
        settings = self.settings
        try:
            text = render(
                self.template, command=command, seeds=[r.seed for r in records], run_dir=run_dir.resolve(),
                workers=settings.workers, gpus_per_task=settings.gpus_per_task, total_cpus=settings.total_cpus,
                ntasks=settings.ntasks, nodes=settings.nodes, job_name=variant, partition=settings.partition,
                time=settings.time, mem=settings.mem, extra_sbatch=settings.extra, setup=settings.setup,
                env=variant_env(plan, run_dir, variant, os.environ),
                task_env={name: [env[name] for env in per_task] for name in per_task[0]},
                secret_env=referenced_secrets(command), seed_flag=plan.seed_flag,
            )
        except (TemplateError, ValueError) as error:
            raise PlanError(str(error)) from None
        parsed = sbatch_script.parse(text)
        return _Script(text, parsed, sbatch_script.log_patterns(parsed, plan.workdir(run_dir, variant)))

    def describe_array(self, run_dir: Path, variant: str, records: list[JobRecord], script: _Script) -> list[str]:
        lines = [f"# {w}" for w in ignored_directives(self.template, script.text, script.parsed)]
        lines.append(f"# {variant}: job array over seeds {[r.seed for r in records]}, "
                     f"script {run_dir / 'scripts' / variant}.sh")
        if options := explicit_options(self.settings):
            lines.append(f"# submitted with: sbatch {' '.join(options)}")
        return [*lines, script.text]

    def submit(
        self, manifest: Manifest, variant: str, records: list[JobRecord], script: _Script, exclude: list[str]
    ) -> list[tuple[str, str]]:
        for warning in ignored_directives(self.template, script.text, script.parsed):
            say_error(warning)
        (manifest.run_dir / "scripts").mkdir(exist_ok=True)
        path = manifest.run_dir / "scripts" / f"{variant}-{int(time.time() * 1000)}.sh"
        path.write_text(script.text)
        # Slurm does not make the folders of a task's logs; TRL's benchmark.py made slurm/logs itself.
        for pattern in script.logs:
            try:
                if "%" not in str(pattern.parent):
                    pattern.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                say_error(f"warning: {variant}: cannot make the folder of its log {pattern}: {error}")
        options = explicit_options(self.settings) + ([f"--exclude={','.join(exclude)}"] if exclude else [])
        # The variant's variables reach the tasks of any template through sbatch's environment
        # (--export=ALL, sbatch's default), TRL's own included, which exports none of them itself.
        env = os.environ | variant_env(manifest.plan, manifest.run_dir, variant, os.environ)
        # Run where the variant's jobs run: a relative path in the script means the same to both.
        workdir = str(manifest.plan.workdir(manifest.run_dir, variant))
        array = parse_job_id(run_slurm(["sbatch", "--parsable", "--hold", *options, str(path.resolve())],
                                       cwd=workdir, env=env))
        # The log as Slurm names it; %j (the task's own job id) and %N are filled in by refresh.
        log, job_name = str(script.logs[0]), script.parsed.options.get("job-name") or path.name
        say(f"{variant}: submitted job array {array} ({len(records)} tasks), script {path}")
        return [(f"{array}_{index}", sbatch_script.expand(log, A=array, a=index, x=job_name, u=getpass.getuser()))
                for index in range(len(records))]


def _apply_sacct(records: list[Record]) -> None:
    out = run_slurm(["sacct", "-X", "--parsable2", "-o", _SACCT_FIELDS, "-j", ",".join(_arrays(records))])
    # Imported here: submitit adds ~0.1 s to every start-up, and submitting needs no sacct.
    from submitit.slurm.slurm import SlurmInfoWatcher

    info = SlurmInfoWatcher().read_info(out)
    for record in records:
        stats = info.get(record.scheduler_id or "")
        # An array cancelled whole while its tasks were pending has one row, under the array's id. (Such
        # a row also stands for a whole array while accounting catches up, in the array's summary state.)
        whole = info.get(array_id(record.scheduler_id or ""), {})
        if not stats and whole.get("State", "").startswith(CANCELLED):
            stats = whole
        if not stats:
            continue  # not in accounting yet: keep what we knew
        record.state = stats["State"].split()[0].rstrip("+")  # "CANCELLED by 0" -> CANCELLED
        record.node = stats["NodeList"] if stats["NodeList"] not in ("", "None assigned") else record.node
        if record.log and sbatch_script.unresolved(record.log):
            known = {"j": stats["JobIDRaw"]} | ({"N": sbatch_script.first_node(record.node)} if record.node else {})
            record.log = sbatch_script.expand(record.log, **known)
        record.start = _when(stats["Start"]) or record.start
        record.end = _when(stats["End"]) if record.state not in ACTIVE_STATES else None
        if record.state not in ACTIVE_STATES:
            # "code:signal"; a task killed by a signal reads as the shell would report it, 128 + signal.
            code, signum = (int(x or 0) for x in stats["ExitCode"].partition(":")[::2])
            record.exit_code = 128 + signum if signum and not code else code


def _note_stuck(records: list[Record], queued: dict[str, _Queued]) -> None:
    """Say so in its record when a pending task can never start as asked (e.g. more CPUs per GPU than a
    node has: TRL's default --slurm-total-cpus 50 on a small node), rather than wait for it in silence."""
    for record in records:
        task = queued.get(record.scheduler_id or "")
        if task and task.reason in _STUCK_REASONS:
            record.message = (f"pending for good: Slurm says {task.reason}, it cannot start as asked; cancel it "
                              "(benchmark cancel RUN_DIR) and ask for less (--slurm-total-cpus, --slurm-gpus-per-task)")


class _Queued(NamedTuple):
    state: str
    node: str
    reason: str


def _squeue(records: list[Record]) -> dict[str, _Queued]:
    """What squeue says of these tasks (those still queued or running), by task id."""
    out = run_slurm(["squeue", "-h", "-r", "-o", "%i|%T|%N|%r", "-j", ",".join(_arrays(records))])
    return {job_id: _Queued(*rest) for job_id, *rest in (line.split("|", 3) for line in out.splitlines())}


def _apply_squeue(run_dir: Path, records: list[Record], queued: dict[str, _Queued]) -> None:
    for record in records:
        if record.scheduler_id in queued:
            record.state, node, _ = queued[record.scheduler_id]
            record.node = node or record.node
        else:
            # Neither queued nor, without an exit file, ended as far as we can see: keep what we knew.
            record.end_from_exit_file(run_dir)
