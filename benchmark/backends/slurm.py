"""Slurm backend: one `sbatch` job array per variant, one array task per seed.

Each variant's script is rendered from a jinja2 template (benchmark/templates.py) and kept in the run
dir. `SlurmArrays` holds the scheduler hooks the slurm and submitit backends share on a Slurm cluster:
finding a submission by its token, the follow-up job, release, states from `sacct` (parsed by
submitit's own reader), else from `squeue` and the exit files every task writes, and `scancel`.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from benchmark import sbatch_script
from benchmark.backends import BackendError, Scheduler, task_env, variant_env
from benchmark.manifest import (
    ACTIVE_STATES,
    CANCELLED,
    HELD,
    QUEUED,
    FollowUpRecord,
    JobRecord,
    Record,
    read_exit_file,
)
from benchmark.plan import ArraySettings, Plan, PlanError, SlurmSettings, variant_folder
from benchmark.redact import referenced_secrets
from benchmark.templates import TemplateError, render

_TIMEOUT_S = 60
# squeue's reasons for a pending job that no other job's end can lift: it never starts as submitted.
_STUCK_REASONS = {"BadConstraints", "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "InvalidQOS",
                  "InvalidAccount"}
_SACCT_FIELDS = "JobID,JobIDRaw,State,ExitCode,NodeList,Start,End"


class SlurmError(BackendError):
    """A Slurm command that failed; the message carries Slurm's own words."""


def run_slurm(argv: list[str], cwd: str | None = None, env: Mapping[str, str] | None = None) -> str:
    # A session of its own: a Ctrl-C at the terminal is the harness's to handle, never kills an sbatch mid-way.
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, cwd=cwd, env=env,
                                start_new_session=True)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: is Slurm installed and on PATH?") from None
    except subprocess.TimeoutExpired as error:
        # sbatch retries in silence while the controller refuses jobs (MaxJobCount): say what it said.
        said = error.stderr.decode(errors="replace").strip() if isinstance(error.stderr, bytes) else error.stderr
        raise SlurmError(f"{argv[0]} did not answer within {_TIMEOUT_S} s" + (f": {said}" if said else "")) from None
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


class SlurmArrays(Scheduler):
    """What both array backends do the same way on a Slurm cluster: submissions held and named by their
    token in `--comment`, release, states from `sacct` (else `squeue` and the exit files every task
    writes), the follow-up job, `scancel`."""

    holds = True

    def __init__(self, plan: Plan, run_dir: Path) -> None:
        super().__init__(plan, run_dir)
        assert isinstance(plan.backend, ArraySettings)
        self.settings: ArraySettings = plan.backend

    def find(self, records: list[Record], token: str) -> bool:
        """A held submission stays in squeue: look for its token there."""
        try:
            out = run_slurm(["squeue", "-h", "-o", "%F|%k"])
        except SlurmError:
            return False
        found = {job for job, _, comment in (line.partition("|") for line in out.splitlines()) if comment == token}
        if not found:
            return False
        self.adopt(records, found.pop())
        return True

    def adopt(self, records: list[Record], array: str) -> None:
        """Set the scheduler ids (and logs) of the records submitted as job `array`."""
        if isinstance(records[0], FollowUpRecord):
            records[0].scheduler_id, records[0].log = array, f"logs/then_{array}.out"
        else:
            for index, record in enumerate(records):
                record.scheduler_id = f"{array}_{index}"

    def submit_followup(self, followup: FollowUpRecord, after: list[Record], token: str) -> list[str]:
        """The follow-up command as one more job, held, after every array has ended however it ended."""
        command = "\n".join([*self.settings.setup, followup.command])
        (self.run_dir / "logs").mkdir(exist_ok=True)  # Slurm makes no folder for a log
        arrays = _arrays(after)
        job_id = parse_job_id(run_slurm(
            ["sbatch", "--parsable", "--hold", f"--comment={token}", f"--dependency=afterany:{':'.join(arrays)}",
             "--job-name=then", f"--output={self.run_dir.resolve() / 'logs' / 'then_%j.out'}",
             *_given(self.settings, "partition", "time"), "--wrap", command],
            cwd=self.plan.cwd, env=os.environ | {"BENCHMARK_RUN_DIR": str(self.run_dir.resolve())},
        ))
        self.adopt([followup], job_id)
        return [f"then: submitted job {job_id}, after {len(arrays)} array(s)"]

    def release(self, records: list[Record]) -> str | None:
        ids = _arrays(records)
        try:
            run_slurm(["scontrol", "release", ",".join(ids)])
        except SlurmError as error:
            # A job cancelled while held has finished; any other refusal leaves jobs held: say so.
            if "already finished" not in str(error):
                return f"{error}; release them by hand: scontrol release {','.join(ids)}"
        return None

    def poll(self, records: list[Record]) -> list[str]:
        notes = []
        try:
            run_slurm(["scontrol", "ping"])
        except SlurmError as error:
            notes.append(f"the Slurm controller is unreachable ({error}); states may be stale")
        queued = None
        try:
            _apply_sacct(records)
        except SlurmError as error:
            notes.append(f"sacct gave no states ({error}): reading squeue and the tasks' exit files instead")
            queued = _squeue(records)
            _apply_squeue(self.run_dir, records, queued)
        if pending := [r for r in records if r.state in (QUEUED, HELD)]:
            with contextlib.suppress(SlurmError):  # the states stand; only the reasons are missing
                _note_stuck(pending, queued if queued is not None else _squeue(pending))
        # The command's own exit code is in its task's exit file (submitit's tasks end with 1 whatever it was).
        for record in (r for r in records if r.state not in ACTIVE_STATES):
            if written := read_exit_file(self.run_dir, record.scheduler_id or ""):
                record.exit_code = written[0]
        return notes

    def cancel(self, records: list[Record], hurry: Callable[[], bool] | None = None) -> list[str]:
        arrays = _arrays([r for r in records if r.scheduler_id])
        if not arrays:
            return ["nothing to cancel: no task of this run is pending or running"]
        run_slurm(["scancel", *arrays])
        return [f"cancelled {len(records)} task(s) in job(s) {', '.join(arrays)}"]


@dataclass(frozen=True)
class _Script:
    text: str
    parsed: sbatch_script.BatchScript
    logs: list[Path]  # the log patterns it sets, absolute


class SlurmBackend(SlurmArrays):
    parallel_submit = True

    def __init__(self, plan: Plan, run_dir: Path) -> None:
        super().__init__(plan, run_dir)
        assert isinstance(plan.backend, SlurmSettings)
        self.template = plan.backend.template

    def prepare(self, records: list[JobRecord]) -> _Script:
        plan, run_dir, variant = self.plan, self.run_dir, records[0].variant
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

    def describe(self, records: list[JobRecord]) -> str:
        parts = []
        for group in self.batches(records, []):
            variant, script = group[0].variant, self.prepare(group)
            parts += [f"# {w}" for w in ignored_directives(self.template, script.text, script.parsed)]
            token = None if self.settings.workers == 0 else "<token>"
            parts.append(f"# {variant}: job array over seeds {[r.seed for r in group]}, "
                         f"script {self.script_path(variant, token)}"
                         + (": --workers 0 writes it and submits nothing" if token is None else ""))
            if options := explicit_options(self.settings):
                parts.append(f"# submitted with: sbatch {' '.join(options)}")
            parts.append(script.text)
        if self.settings.then:
            parts.append(f"# then, after every task: {self.settings.then}")
        return "\n".join(parts)

    def submit(self, records: list[JobRecord], token: str, script: _Script, exclude: list[str]) -> list[str]:
        variant = records[0].variant
        path = self.script_path(variant, token)
        notes = self._write(variant, script, path)
        options = explicit_options(self.settings) + ([f"--exclude={','.join(exclude)}"] if exclude else [])
        # The variant's variables reach the tasks of any template through sbatch's environment
        # (--export=ALL, sbatch's default), TRL's own included, which exports none of them itself.
        env = os.environ | variant_env(self.plan, self.run_dir, variant, os.environ)
        # Run where the variant's jobs run: a relative path in the script means the same to both.
        workdir = str(self.plan.workdir(self.run_dir, variant))
        array = parse_job_id(run_slurm(
            ["sbatch", "--parsable", "--hold", f"--comment={token}", *options, str(path.resolve())],
            cwd=workdir, env=env))
        self.adopt(records, array)
        # The log as Slurm names it; %j (the task's own job id) and %N are filled in by poll.
        log, job_name = str(script.logs[0]), script.parsed.options.get("job-name") or path.name
        for index, record in enumerate(records):
            record.log = sbatch_script.expand(log, A=array, a=index, x=job_name, u=getpass.getuser())
        return [*notes, f"{variant}: submitted job array {array} ({len(records)} tasks), script {path}"]

    def script_path(self, variant: str, token: str | None) -> Path:
        """Where a variant's script goes: named after the submission's token; one never submitted has none."""
        return self.run_dir / "scripts" / f"{variant_folder(variant)}{f'-{token}' if token else ''}.sh"

    def _write(self, variant: str, script: _Script, path: Path) -> list[str]:
        """Write the script and make its logs' folders; the warnings for the user."""
        notes = ignored_directives(self.template, script.text, script.parsed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script.text)
        # Slurm does not make the folders of a task's logs; TRL's benchmark.py made slurm/logs itself.
        for pattern in script.logs:
            try:
                if "%" not in str(pattern.parent):
                    pattern.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                notes.append(f"warning: {variant}: cannot make the folder of its log {pattern}: {error}")
        return notes

    def write_scripts(self, records: list[JobRecord]) -> list[str]:
        """`--workers 0`, as TRL's benchmark.py: each variant's script written with its logs' folders, nothing
        submitted; lines saying how to submit each by hand."""
        lines = []
        for group in self.batches(records, []):
            variant = group[0].variant
            path = self.script_path(variant, None)
            lines += self._write(variant, self.prepare(group), path)
            # Relative paths in a script mean what they mean in the folder sbatch runs in.
            workdir = self.plan.workdir(self.run_dir, variant)
            sbatch = shlex.join(["sbatch", *explicit_options(self.settings), str(path.resolve())])
            where = "" if workdir == Path(self.plan.cwd) else f"cd {shlex.quote(str(workdir))} && "
            lines.append(f"{variant}: wrote {path}; to submit it: {where}{sbatch}")
        return lines

    def find(self, records: list[Record], token: str) -> bool:
        if not super().find(records, token):
            return False
        if isinstance(records[0], JobRecord):  # the logs, as `submit` would have named them
            script = self.prepare(records)
            array = array_id(records[0].scheduler_id or "")
            job_name = script.parsed.options.get("job-name") or f"{variant_folder(records[0].variant)}-{token}.sh"
            for index, record in enumerate(records):
                record.log = sbatch_script.expand(str(script.logs[0]), A=array, a=index, x=job_name,
                                                  u=getpass.getuser())
        return True


def array_id(scheduler_id: str) -> str:
    """The array job a task belongs to: "123" of "123_4"."""
    return scheduler_id.split("_")[0]


def _apply_sacct(records: list[Record]) -> None:
    out = run_slurm(["sacct", "-X", "--parsable2", "-o", _SACCT_FIELDS, "-j", ",".join(_arrays(records))])
    # Imported here: submitit adds ~0.1 s to every start-up, and submitting needs no sacct.
    from submitit.slurm.slurm import SlurmInfoWatcher

    # A task's own row wins over a range row of its array (`455_[26-99%16]`), which can outlive the
    # tasks' rows in accounting while a slurmd is down and would say PENDING for tasks long done.
    header, *rows = out.splitlines()
    ranges = [row for row in rows if "[" in row.partition("|")[0]]
    own = [row for row in rows if "[" not in row.partition("|")[0]]
    reader = SlurmInfoWatcher()
    info = reader.read_info("\n".join([header, *ranges])) | reader.read_info("\n".join([header, *own]))
    for record in records:
        stats = info.get(record.scheduler_id or "")
        # An array cancelled whole while its tasks were pending has one row, under the array's id. (Such
        # a row also stands for a whole array while accounting catches up, in the array's summary state.)
        whole = info.get(array_id(record.scheduler_id or ""), {})
        if not stats and whole.get("State", "").startswith(CANCELLED):
            stats = whole
        if not stats:
            continue  # not in accounting yet: keep what we knew
        record.state = _ours(record, stats["State"].split()[0].rstrip("+"))  # "CANCELLED by 0" -> CANCELLED
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


def _ours(record: Record, slurm_state: str) -> str:
    """Slurm's state in the harness's words: its PENDING is HELD until the harness has released the job."""
    if slurm_state == "PENDING":
        return HELD if record.state == HELD else QUEUED
    return slurm_state


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
            state, node, _ = queued[record.scheduler_id]
            record.state, record.node = _ours(record, state), node or record.node
        else:
            # Neither queued nor, without an exit file, ended as far as we can see: keep what we knew.
            record.end_from_exit_file(run_dir)
