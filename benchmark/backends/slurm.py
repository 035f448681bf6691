"""Slurm backend: one `sbatch` job array per variant, one array task per seed.

Each variant's script is rendered from a jinja2 template (benchmark/templates.py) and kept in the run
dir. Arrays are submitted held, recorded, then released: no task can start before the manifest knows
its job id. States come from `sacct` (parsed by submitit's own reader), else from `squeue` and the
exit-code files that every task writes.
"""

from __future__ import annotations

import difflib
import getpass
import re
import secrets
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmark import sbatch_script
from benchmark.backends import Backend, BackendError
from benchmark.manifest import ACTIVE_STATES, CANCELLED, COMPLETED, NOT_SUBMITTED, PENDING, JobRecord, Manifest
from benchmark.plan import PlanError
from benchmark.redact import Redactor, referenced_secrets
from benchmark.tags import merge_wandb_tags
from benchmark.templates import TemplateError, exit_file, render
from benchmark.view import SweepView, final_summary, say, say_error

THEN = "then"  # the variant name of the follow-up job (`--then`)
_TIMEOUT_S = 60
_SACCT_FIELDS = "JobID,JobIDRaw,State,ExitCode,NodeList,Start,End"


class SlurmError(BackendError):
    """A Slurm command that failed; the message carries Slurm's own words."""


def slurm_settings(
    template: str, workers: int, gpus_per_task: int | None, total_cpus: int | None, ntasks: int | None,
    nodes: int | None, partition: str | None, time_limit: str | None, mem: str | None, extra: list[str],
    setup: list[str], then: str | None, wait: bool, poll_interval: float,
) -> dict[str, Any]:
    if not Path(template).is_file():
        raise PlanError(f"--slurm-template-path {template}: no such file")
    if workers < 0:
        raise PlanError(f"--workers must not be negative, got {workers}")
    return {
        "template": str(Path(template).resolve()),
        "workers": workers,
        "gpus_per_task": gpus_per_task or 0,
        "total_cpus": total_cpus or 1,
        "ntasks": ntasks or 1,
        "nodes": nodes,
        "partition": partition,
        "time": time_limit,
        "mem": mem,
        "extra": extra,
        "setup": setup,
        "then": then,
        "wait": wait,
        "poll_interval": poll_interval,
        # Tasks name their W&B runs <prefix>-<job>-<task>: unique across sweeps and clusters.
        "wandb_run_id_prefix": "bm" + secrets.token_hex(3),
    }


def run_slurm(argv: list[str], cwd: str | None = None) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, cwd=cwd)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: is Slurm installed and on PATH?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {_TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise SlurmError(f"{argv[0]} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
    return result.stdout


def _sbatch_held(script: Path, cwd: str, options: list[str]) -> str | SlurmError:
    """Submit a script held; its job id, or Slurm's refusal (returned: other submissions go on)."""
    try:
        return parse_job_id(run_slurm(["sbatch", "--parsable", "--hold", *options, str(script)], cwd=cwd))
    except SlurmError as error:
        return error


def explicit_options(settings: dict[str, Any]) -> list[str]:
    """The flags the user gave, for sbatch's command line: they override the script's #SBATCH lines, so
    they apply even to a template that hardcodes its own (TRL's says --partition=hopper-prod)."""
    given = [("--partition", settings["partition"]), ("--time", settings["time"]), ("--mem", settings["mem"])]
    return [f"{flag}={value}" for flag, value in given if value] + list(settings["extra"])


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


def _script(manifest_dir: Path, plan: dict[str, Any], variant: str, seeds: list[int]) -> str:
    settings = plan["slurm"]
    command = next(v["command"] for v in plan["variants"] if v["name"] == variant)
    env = {"BENCHMARK_RUN_DIR": str(manifest_dir.resolve()), "BENCHMARK_VARIANT": variant, "WANDB_RUN_GROUP": variant}
    if plan.get("wandb_tags"):
        env["WANDB_TAGS"] = merge_wandb_tags("", plan["wandb_tags"])
    try:
        return render(
            settings["template"], command=command, seeds=seeds, run_dir=manifest_dir.resolve(),
            workers=settings["workers"], gpus_per_task=settings["gpus_per_task"],
            total_cpus=settings["total_cpus"], ntasks=settings["ntasks"], nodes=settings["nodes"],
            job_name=variant, partition=settings["partition"], time=settings["time"], mem=settings["mem"],
            extra_sbatch=settings["extra"], setup=settings["setup"], env=env,
            secret_env=referenced_secrets(command), seed_flag=plan["seed_flag"],
            wandb_run_id_prefix=settings["wandb_run_id_prefix"],
        )
    except (TemplateError, ValueError) as error:
        raise PlanError(str(error)) from None


def by_variant(records: list[JobRecord]) -> dict[str, list[JobRecord]]:
    """The array tasks of each variant (the follow-up job is no array task)."""
    groups: dict[str, list[JobRecord]] = {}
    for record in records:
        if record.variant != THEN:
            groups.setdefault(record.variant, []).append(record)
    return groups


def _when(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:  # "Unknown", "None" while a task has not started or ended
        return None


class SlurmBackend(Backend):
    name = "slurm"

    def describe(self, run_dir: Path, plan: dict[str, Any], records: list[JobRecord]) -> str:
        parts = []
        for variant, group in by_variant(records).items():
            seeds = [r.seed for r in group]
            script = _script(run_dir, plan, variant, seeds)
            warnings = ignored_directives(plan["slurm"]["template"], script, sbatch_script.parse(script))
            parts.extend(f"# {w}" for w in warnings)
            parts.append(f"# {variant}: job array over seeds {seeds}, script {run_dir / 'scripts' / variant}.sh")
            if options := explicit_options(plan["slurm"]):
                parts.append(f"# submitted with: sbatch {' '.join(options)}")
            parts.append(script)
        if plan["slurm"]["then"]:
            parts.append(f"# then, after every task: {plan['slurm']['then']}")
        return "\n".join(parts)

    def launch(self, manifest: Manifest, ids: list[str]) -> int:
        settings = manifest.plan["slurm"]
        records = [manifest.jobs[i] for i in ids if i != THEN]
        groups = by_variant(records)
        # Render everything first: a template error must stop the launch before any submission.
        scripts = {v: _script(manifest.run_dir, manifest.plan, v, [r.seed for r in g]) for v, g in groups.items()}
        (manifest.run_dir / "scripts").mkdir(exist_ok=True)
        (manifest.run_dir / "logs").mkdir(exist_ok=True)
        cwd = manifest.plan["cwd"]
        paths, parsed, logs = {}, {}, {}
        for variant, script in scripts.items():
            parsed[variant] = sbatch_script.parse(script)
            for warning in ignored_directives(settings["template"], script, parsed[variant]):
                say_error(warning)
            paths[variant] = manifest.run_dir / "scripts" / f"{variant}-{int(time.time() * 1000)}.sh"
            paths[variant].write_text(script)
            logs[variant] = sbatch_script.log_patterns(parsed[variant], Path(cwd))
            # Slurm does not make the folders of a task's logs; TRL's benchmark.py made slurm/logs itself.
            for pattern in logs[variant]:
                try:
                    if "%" not in str(pattern.parent):
                        pattern.parent.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    say_error(f"warning: {variant}: cannot make the folder of its log {pattern}: {error}")
        submitted, refused = [], []
        # All arrays are submitted at once: each sbatch mostly waits on slurmctld, so ten in parallel
        # take little longer than one. They are held, so none starts before its ids are on disk.
        with ThreadPoolExecutor(max_workers=min(len(groups), 16) or 1) as pool:
            options = explicit_options(settings)
            answers = pool.map(lambda v: _sbatch_held(paths[v], cwd, options), groups)
            for (variant, group), answer in zip(groups.items(), answers, strict=True):
                if isinstance(answer, SlurmError):
                    for record in group:
                        record.state, record.message = NOT_SUBMITTED, str(answer)
                    refused.append(f"{variant}: {answer}")
                else:
                    # The log as Slurm names it; %j (the task's own job id) and %N are filled in by refresh.
                    log = str(logs[variant][0])
                    job_name = parsed[variant].options.get("job-name") or paths[variant].name
                    for index, record in enumerate(group):
                        record.slurm_id, record.state = f"{answer}_{index}", PENDING
                        record.log = sbatch_script.expand(log, A=answer, a=index, x=job_name, u=getpass.getuser())
                        record.wandb_id = f"{settings['wandb_run_id_prefix']}-{answer}-{index}"
                    submitted.append(answer)
                    say(f"{variant}: submitted job array {answer} ({len(group)} tasks), script {paths[variant]}")
                manifest.save(*group, sync=False)
        then = manifest.jobs.get(THEN)
        if submitted and then and then.id in ids:
            self._submit_then(manifest, then, submitted)
        manifest.sync()
        if submitted:
            run_slurm(["scontrol", "release", ",".join(submitted)])
        for line in refused:
            say_error(f"error: not submitted: {line}")
        code = 1 if refused else 0
        if settings["wait"] and submitted:
            waited = [r.id for r in records if r.slurm_id] + ([THEN] if then and then.slurm_id else [])
            code = max(code, self.wait(manifest, waited))
        return code

    def _submit_then(self, manifest: Manifest, then: JobRecord, after: list[str]) -> None:
        out = manifest.run_dir / "logs" / "then_%j.out"
        job_id = run_slurm(
            ["sbatch", "--parsable", "--hold", f"--dependency=afterany:{':'.join(after)}", "--job-name=then",
             f"--output={out}", "--wrap", then.command],
            cwd=manifest.plan["cwd"],
        )
        job_id = parse_job_id(job_id)
        then.slurm_id, then.state, then.log = job_id, PENDING, f"logs/then_{job_id}.out"
        manifest.save(then, sync=False)
        after.append(job_id)
        say(f"then: submitted job {job_id}, after {len(after) - 1} array(s)")

    def wait(self, manifest: Manifest, ids: list[str]) -> int:
        records = [manifest.jobs[i] for i in ids]
        view = SweepView(records, Redactor())
        try:
            with view:
                while any(r.state in ACTIVE_STATES for r in records):
                    time.sleep(manifest.plan[self.name]["poll_interval"])
                    self._refresh_and_save(manifest, view.event)
        except KeyboardInterrupt:
            say(f"stopped waiting; the jobs go on. Stop them with: benchmark cancel {manifest.run_dir}")
            return 130
        return final_summary(records, manifest.run_dir, view.redactor, time.time() - view.started)

    def _refresh_and_save(self, manifest: Manifest, event: Callable[..., None]) -> None:
        before = {r.id: r.state for r in manifest.jobs.values()}
        note = self.refresh(manifest)
        if note:
            say(note)
        changed = [r for r in manifest.jobs.values() if r.state != before[r.id]]
        for record in changed:
            event(record, record.state.lower() + (f" (exit {record.exit_code})" if record.exit_code is not None
                                                  else ""), notable=record.state not in ACTIVE_STATES | {COMPLETED})
        if changed:
            manifest.save(*changed, sync=False)

    def refresh(self, manifest: Manifest) -> str | None:
        active = [r for r in manifest.jobs.values() if r.slurm_id and r.state in ACTIVE_STATES]
        if not active:
            return None
        notes = []
        try:
            run_slurm(["scontrol", "ping"])
        except SlurmError as error:
            notes.append(f"the Slurm controller is unreachable ({error}); states may be stale")
        try:
            _apply_sacct(manifest, active)
        except SlurmError as error:
            notes.append(f"sacct gave no states ({error}): reading squeue and the tasks' exit files instead")
            _apply_exit_files(manifest, active, _squeue_states(active))
        return "\n".join(notes) or None

    def cancel(self, manifest: Manifest) -> int:
        active = [r for r in manifest.jobs.values() if r.slurm_id and r.state in ACTIVE_STATES]
        arrays = sorted({r.slurm_id.split("_")[0] for r in active if r.slurm_id})
        if not arrays:
            say("nothing to cancel: no task of this run is pending or running")
            return 0
        run_slurm(["scancel", *arrays])
        for record in active:
            record.state, record.end = CANCELLED, record.end or time.time()
        manifest.save(*active)
        say(f"cancelled {len(active)} task(s) in job(s) {', '.join(arrays)}")
        return 0


def _apply_sacct(manifest: Manifest, records: list[JobRecord]) -> None:
    arrays = sorted({r.slurm_id.split("_")[0] for r in records if r.slurm_id})
    out = run_slurm(["sacct", "-X", "--parsable2", "-o", _SACCT_FIELDS, "-j", ",".join(arrays)])
    # Imported here: submitit adds ~0.1 s to every start-up, and submitting needs no sacct.
    from submitit.slurm.slurm import SlurmInfoWatcher

    info = SlurmInfoWatcher().read_info(out)
    for record in records:
        stats = info.get(record.slurm_id or "")
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


def _squeue_states(records: list[JobRecord]) -> dict[str, tuple[str, str]]:
    arrays = sorted({r.slurm_id.split("_")[0] for r in records if r.slurm_id})
    out = run_slurm(["squeue", "-h", "-r", "-o", "%i|%T|%N", "-j", ",".join(arrays)])
    states = {}
    for line in out.splitlines():
        job_id, state, node = line.split("|")
        states[job_id] = (state, node)
    return states


def _apply_exit_files(manifest: Manifest, records: list[JobRecord], queued: dict[str, tuple[str, str]]) -> None:
    for record in records:
        if record.slurm_id in queued:
            record.state, node = queued[record.slurm_id]
            record.node = node or record.node
            continue
        job_id, _, index = (record.slurm_id or "").partition("_")
        if not index:
            continue  # the follow-up job is no array task and writes no exit file
        # Neither queued nor, without an exit file, ended as far as we can see: keep what we knew.
        record.end_from_exit_file(exit_file(manifest.run_dir, job_id, int(index)))


def parse_job_id(out: str) -> str:
    match = re.match(r"\d+", out.strip())
    if not match:
        raise SlurmError(f"sbatch answered {out.strip()!r}, not a job id")
    return match[0]
