"""The submission flow of the array backends: one array per variant, one task per seed.

    1. group the jobs by variant;
    2. prepare each variant's array (its batch script, or its executor's parameters): a bad
       template stops the launch here, before anything is submitted;
    3. submit every array, held;
    4. record each task's scheduler id and log, or mark the variant's jobs NOT_SUBMITTED;
    5. submit the follow-up job (`--then`), held, after every array;
    6. release: no task starts before the manifest on disk knows its id;
    7. with --wait, follow every task to its end, submitting failed ones again (--max-retries).

The Slurm and submitit backends fill in the hooks (`prepare`, `describe_array`, `submit`, and where
the scheduler has them, `submit_followup` and `release`) and the interface's `refresh` and `cancel`.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmark.backends import Backend, BackendError, name_wandb_run
from benchmark.manifest import ACTIVE_STATES, COMPLETED, NOT_SUBMITTED, PENDING, FollowUpRecord, JobRecord, Manifest
from benchmark.plan import ArraySettings, Plan, PlanError
from benchmark.redact import Redactor
from benchmark.view import SweepView, final_summary, say, say_error

# A task that ends so is submitted again under --max-retries: the next try may well succeed.
RETRIED_STATES = {"FAILED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "OUT_OF_MEMORY"}
# ... and these are not: another try would end the same way, or the user meant it.
NOT_RETRIED = {
    "TIMEOUT": "it reached its time limit, which another try would reach too (raise --slurm-time)",
    "CANCELLED": "it was cancelled",
}


def by_variant(records: list[JobRecord]) -> dict[str, list[JobRecord]]:
    """The tasks of each variant's array, in the order of the plan."""
    groups: dict[str, list[JobRecord]] = {}
    for record in records:
        groups.setdefault(record.variant, []).append(record)
    return groups


def array_id(scheduler_id: str) -> str:
    """The array job a task belongs to: "123" of "123_4"."""
    return scheduler_id.split("_")[0]


class ArrayBackend(Backend):
    # Whether the arrays may be submitted from threads at once (each sbatch mostly waits on slurmctld).
    parallel_submit = False

    def __init__(self, plan: Plan) -> None:
        assert isinstance(plan.backend, ArraySettings)
        self.settings: ArraySettings = plan.backend

    @abstractmethod
    def prepare(self, run_dir: Path, plan: Plan, variant: str, records: list[JobRecord]) -> Any:
        """What submitting the variant's array takes (a script, executor parameters); PlanError if none can be."""

    @abstractmethod
    def describe_array(self, run_dir: Path, variant: str, records: list[JobRecord], prepared: Any) -> list[str]:
        """The dry-run's lines for one array."""

    @abstractmethod
    def submit(
        self, manifest: Manifest, variant: str, records: list[JobRecord], prepared: Any, exclude: list[str]
    ) -> list[tuple[str, str]]:
        """Submit one array, held where the scheduler can hold, on no node of `exclude`: each task's
        scheduler id and log. BackendError when the scheduler refuses it."""

    def submit_followup(self, manifest: Manifest, followup: FollowUpRecord, after: list[str]) -> None:
        raise PlanError("--then needs a scheduler that knows dependencies: Slurm")

    def release(self, scheduler_ids: list[str]) -> None:
        """Let held jobs start (a scheduler that cannot hold starts them at submission)."""

    def describe(self, run_dir: Path, plan: Plan, records: list[JobRecord]) -> str:
        parts = []
        for variant, group in by_variant(records).items():
            parts += self.describe_array(run_dir, variant, group, self.prepare(run_dir, plan, variant, group))
        if self.settings.then:
            parts.append(f"# then, after every task: {self.settings.then}")
        return "\n".join(parts)

    def launch(self, manifest: Manifest, ids: list[str]) -> int:
        records = [manifest.jobs[i] for i in ids]
        arrays, refused = self._submit(manifest, records, {})
        followup = manifest.followup
        # With retries ahead, the follow-up waits, held, until no task is left to submit again.
        hold_followup = False
        if arrays and followup is not None and followup.scheduler_id is None:
            self.submit_followup(manifest, followup, arrays)
            manifest.save(followup, sync=False)
            hold_followup = self.settings.wait and manifest.plan.max_retries > 0
            if not hold_followup and followup.scheduler_id:
                arrays.append(followup.scheduler_id)
        self._release(manifest, arrays, refused)
        code = 1 if refused else 0
        if self.settings.wait and any(r.scheduler_id for r in records):
            code = max(code, self._wait(manifest, [r for r in records if r.scheduler_id], hold_followup))
        return code

    def _submit(
        self, manifest: Manifest, records: list[JobRecord], exclude: dict[str, list[str]]
    ) -> tuple[list[str], list[str]]:
        """Steps 1 to 4 for these jobs: the arrays submitted (held), and a line per variant refused."""
        groups = by_variant(records)
        for record in records:
            name_wandb_run(record)
        # Everything is prepared first: a template error must stop the launch before any submission.
        prepared = {v: self.prepare(manifest.run_dir, manifest.plan, v, g) for v, g in groups.items()}

        def submit(variant: str) -> list[tuple[str, str]] | BackendError:
            try:
                return self.submit(manifest, variant, groups[variant], prepared[variant], exclude.get(variant, []))
            except BackendError as error:  # returned: the other arrays go on
                return error

        if self.parallel_submit and len(groups) > 1:
            with ThreadPoolExecutor(max_workers=min(len(groups), 16)) as pool:
                answers = list(pool.map(submit, groups))
        else:
            answers = [submit(variant) for variant in groups]
        arrays: list[str] = []
        refused = []
        for (variant, group), answer in zip(groups.items(), answers, strict=True):
            if isinstance(answer, BackendError):
                for record in group:
                    record.state, record.message = NOT_SUBMITTED, str(answer)
                refused.append(f"{variant}: {answer}")
            else:
                for record, (scheduler_id, log) in zip(group, answer, strict=True):
                    record.scheduler_id, record.log, record.state = scheduler_id, log, PENDING
                arrays += dict.fromkeys(array_id(scheduler_id) for scheduler_id, _ in answer)
            manifest.save(*group, sync=False)
        return arrays, refused

    def _wait(self, manifest: Manifest, records: list[JobRecord], hold_followup: bool) -> int:
        """Step 7: follow the tasks (and the follow-up) to their end with a live view; the exit code."""
        followup = manifest.followup if manifest.followup and manifest.followup.scheduler_id else None
        watched = [*records, *([followup] if followup else [])]
        view = SweepView(watched, Redactor())
        try:
            with view:
                while any(r.state in ACTIVE_STATES for r in watched):
                    time.sleep(self.settings.poll_interval)
                    self._refresh_and_save(manifest, view.event)
                    again = [r for r in records
                             if r.state in RETRIED_STATES and len(r.tries) < manifest.plan.max_retries]
                    if again:
                        self._retry(manifest, again, view.event)
                    elif hold_followup and followup and all(r.state not in ACTIVE_STATES for r in records):
                        self.release([followup.scheduler_id or ""])
                        hold_followup = False
        except KeyboardInterrupt:
            if hold_followup and followup:
                self.release([followup.scheduler_id or ""])  # it runs once the arrays end, as without retries
            say(f"stopped waiting; the jobs go on. Stop them with: benchmark cancel {manifest.run_dir}")
            return 130
        return final_summary(watched, manifest.run_dir, view.redactor, time.time() - view.started)

    def _refresh_and_save(self, manifest: Manifest, event: Callable[..., None]) -> None:
        before = {id(r): (r.state, r.message) for r in manifest.records()}
        note = self.refresh(manifest)
        if note:
            say(note)
        changed = [r for r in manifest.records() if (r.state, r.message) != before[id(r)]]
        for record in changed:
            if record.state in NOT_RETRIED and manifest.plan.max_retries and isinstance(record, JobRecord):
                record.message = f"not retried: {NOT_RETRIED[record.state]}"
            exit_code = f" (exit {record.exit_code})" if record.exit_code is not None else ""
            said = f": {record.message}" if record.message and record.message != before[id(record)][1] else ""
            event(record, record.state.lower() + exit_code + said,
                  notable=record.state not in ACTIVE_STATES | {COMPLETED} or bool(said))
        if changed:
            manifest.save(*changed, sync=False)

    def _retry(self, manifest: Manifest, records: list[JobRecord], event: Callable[..., None]) -> None:
        """Submit these ended tasks again, as new arrays of just their seeds; a node that failed is avoided."""
        exclude: dict[str, list[str]] = {}
        for record in records:
            where = f" on {record.node}" if record.node else ""
            event(record, f"{record.state.lower()}{where}; submitting try {len(record.tries) + 2}", notable=True)
            if record.state == "NODE_FAIL" and record.node:
                exclude.setdefault(record.variant, []).append(record.node)
            record.archive_try()
        self._release(manifest, *self._submit(manifest, records, exclude))

    def _release(self, manifest: Manifest, arrays: list[str], refused: list[str]) -> None:
        """Step 6, once every id is on disk; then the variants the scheduler refused, for the user."""
        manifest.sync()
        if arrays:
            self.release(arrays)
        for line in refused:
            say_error(f"error: not submitted: {line}")

