"""The sweep engine: one driver for the states of every job, on every backend.

    PENDING -> SUBMITTING -> HELD -> QUEUED -> RUNNING -> COMPLETED, FAILED, TIMEOUT, ...
                    |          (the local pool: straight to RUNNING)
                    +-> NOT_SUBMITTED (the scheduler refused)
    a try that ended badly, with retries left: archived, PENDING again

Before each action whose effect outlives the harness, the intent is saved (SUBMITTING, with a token
the scheduler keeps); after it, the outcome. So wherever the harness dies, `recover` reads from the
records and the scheduler which of the two happened: a job is submitted again only where the scheduler
never had it. The engine also owns retries, the held follow-up job (`--then`), interrupts, the exit code
and the events the view draws; schedulers (backends/) only submit, release, poll, wait and cancel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmark.backends import BackendError, Scheduler, name_wandb_run, new_token
from benchmark.manifest import (
    ACTIVE_STATES,
    CANCELLED,
    COMPLETED,
    HELD,
    LOST,
    NOT_SUBMITTED,
    PENDING,
    QUEUED,
    RUNNING,
    SUBMITTED_STATES,
    SUBMITTING,
    FollowUpRecord,
    JobRecord,
    Manifest,
    Record,
    run_dir_owner,
)
from benchmark.plan import LocalSettings
from benchmark.view import SweepView, final_summary, say, say_error, say_note

# A try that ends so is run again under --max-retries: the next one may well succeed.
RETRIED_STATES = {"FAILED", LOST, "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "OUT_OF_MEMORY"}
# ... and these are not: another try would end the same way, or the user meant it.
NOT_RETRIED = {
    "TIMEOUT": "it reached its time limit, which another try would reach too (raise --slurm-time)",
    "CANCELLED": "it was cancelled",
}
# Seconds between looks at the local pool's tries that this process did not start (its own wake it at once).
_LOCAL_POLL_S = 0.25

FAULT_ENV = "BENCHMARK_FAULT"
_faults: Counter[str] = Counter()


def fault_point(step: str) -> None:
    """For tests of a crash at a precise step: `BENCHMARK_FAULT=STEP` (or `STEP:N`, the Nth time the
    harness passes it) makes the harness SIGKILL itself there."""
    name, _, nth = os.environ.get(FAULT_ENV, "").partition(":")
    if name == step:
        _faults[step] += 1
        if _faults[step] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


class Sweep:
    """Drives the jobs of one manifest to their end (or, on Slurm without --wait, to their release)."""

    def __init__(self, manifest: Manifest, scheduler: Scheduler) -> None:
        self.manifest = manifest
        self.plan = manifest.plan
        self.scheduler = scheduler
        settings = self.plan.backend
        local = isinstance(settings, LocalSettings)
        self.waiting = local or settings.wait
        self.poll_interval = _LOCAL_POLL_S if local else settings.poll_interval
        # On Slurm the jobs outlive the harness: Ctrl-C stops the watching. Locally it stops the jobs.
        self.detaches = not local
        self.exclude: dict[str, list[str]] = {}  # nodes a variant's retries avoid
        self.refused = False
        self.view = SweepView(manifest.records())

    @property
    def jobs(self) -> list[JobRecord]:
        return list(self.manifest.jobs.values())

    def run(self) -> int:
        """Submit, release, follow and retry until done; the CLI's exit code."""
        for note in self.scheduler.notes():
            say_note(note)
        with _Signals() as signals, self.view:
            while True:
                self._submit_pending()
                self._release_held()
                if signals.caught:
                    return self._interrupted(signals)
                if not self.waiting or not self._unfinished():
                    break
                self.scheduler.wait(self.poll_interval, signals.wakeup)
                signals.drain()
                if signals.caught:
                    return self._interrupted(signals)
                self.poll()
                fault_point("waiting")
                self._retry_failed()
        if not self.waiting:
            return 1 if self.refused else 0
        return final_summary(self.manifest.records(), self.manifest.run_dir, self.view.redactor,
                             time.time() - self.view.started)

    def _unfinished(self) -> bool:
        """Whether a job may still change, or the follow-up, once submitted (it never is when no array was)."""
        followup = self.manifest.followup
        return any(r.state in ACTIVE_STATES for r in self.jobs) or (
            followup is not None and followup.state in ACTIVE_STATES and followup.state != PENDING)

    # -- reading a crash back ------------------------------------------------------------------------

    def recover(self) -> None:
        """Settle the tries a dead harness left half-submitted, then bring every submitted one up to date."""
        for record in settle_submitting(self.manifest, self.scheduler):
            if record.state != PENDING:
                self.view.event(record, f"found at the scheduler ({record.scheduler_id}), adopted")
            self.manifest.save(record)
        self.poll()

    def rerun_unfinished(self) -> None:
        """For `resume`: every try that ended badly is archived and its job planned again."""
        again = [r for r in self.manifest.records() if r.state not in ACTIVE_STATES and r.state != COMPLETED]
        for record in again:
            if isinstance(record, JobRecord):
                record.archive_try()
            else:
                record.reset()
        self.manifest.save(*again)

    # -- the steps -----------------------------------------------------------------------------------

    def _submit_pending(self) -> None:
        pending = [r for r in self.jobs if r.state == PENDING]
        active = [r for r in self.jobs if r.state in SUBMITTED_STATES or r.state == SUBMITTING]
        batches = self.scheduler.batches(pending, active) if pending else []
        if batches:
            for record in (r for batch in batches for r in batch):
                name_wandb_run(record)
            # Everything is prepared first: a bad template stops the wave before any submission.
            prepared = [self.scheduler.prepare(batch) for batch in batches]
            self._submit([(batch, new_token(), p) for batch, p in zip(batches, prepared, strict=True)])
        followup = self.manifest.followup
        if followup is not None and followup.state == PENDING:
            after = [r for r in self.jobs if r.state in SUBMITTED_STATES]
            if after:
                self._submit_followup(followup, after)

    def _submit(self, wave: list[tuple[list[JobRecord], str, Any]]) -> None:
        """Intent (saved, synced), the scheduler's answers, then the outcome, for every submission of a wave."""
        for batch, token, _ in wave:
            for record in batch:
                record.state, record.token = SUBMITTING, token
        self.manifest.save(*(r for batch, _, _ in wave for r in batch))
        fault_point("intent")

        def submit(item: tuple[list[JobRecord], str, Any]) -> list[str] | BackendError:
            batch, token, prepared = item
            try:
                return self.scheduler.submit(batch, token, prepared, self.exclude.get(batch[0].variant, []))
            except BackendError as error:  # returned: the other submissions go on
                return error

        if self.scheduler.parallel_submit and len(wave) > 1:
            with ThreadPoolExecutor(max_workers=min(len(wave), 16)) as pool:
                answers = list(pool.map(submit, wave))
        else:
            answers = [submit(item) for item in wave]
        fault_point("submitted")
        now = time.time()
        for (batch, token, _), answer in zip(wave, answers, strict=True):
            # A scheduler that answered with an error may still have taken the submission (a timeout).
            if isinstance(answer, BackendError) and not self.scheduler.find(batch, token):
                self.refused = True
                say_error(f"error: not submitted: {batch[0].variant}: {answer}")
                for record in batch:
                    record.state, record.message = NOT_SUBMITTED, str(answer)
                continue
            for line in answer if isinstance(answer, list) else []:
                say_note(line)
            for record in batch:
                record.state = HELD if self.scheduler.holds else RUNNING
                record.start = None if self.scheduler.holds else now
                where = f" on gpu {record.gpus}" if record.gpus else ""
                self.view.event(record, f"{record.state.lower()}{where}, {self._job_id(record)}")
        # Held jobs start only once released, after this line is on disk; local ones are running already.
        self.manifest.save(*(r for batch, _, _ in wave for r in batch), sync=self.scheduler.holds)

    def _submit_followup(self, followup: FollowUpRecord, after: list[JobRecord]) -> None:
        followup.state, followup.token = SUBMITTING, new_token()
        self.manifest.save(followup)
        try:
            lines = self.scheduler.submit_followup(followup, list(after), followup.token)
        except BackendError as error:
            if not self.scheduler.find([followup], followup.token):
                followup.state, followup.message = NOT_SUBMITTED, str(error)
                self.manifest.save(followup)
                say_error(f"error: --then not submitted: {error}")
                return
            lines = []
        for line in lines:
            say_note(line)
        followup.state = HELD
        self.manifest.save(followup)

    def _release_held(self, everything: bool = False) -> None:
        """Release the held jobs, and the follow-up once it may start (`everything`: whatever is held)."""
        held: list[Record] = [r for r in self.jobs if r.state == HELD]
        followup = self.manifest.followup
        if followup is not None and followup.state == HELD and (everything or self._followup_may_start()):
            held.append(followup)
        if not held:
            return
        fault_point("held")
        if warning := self.scheduler.release(held):
            say_error(f"warning: {warning}")
        fault_point("released")
        for record in held:
            record.state = QUEUED
        self.manifest.save(*held, sync=False)

    def _followup_may_start(self) -> bool:
        """With retries ahead the follow-up waits, held, until no task is left to run again: its dependency
        names the arrays it was submitted after, not the retries' arrays."""
        retries_ahead = self.waiting and self.plan.max_retries > 0
        return not (retries_ahead and any(r.state in ACTIVE_STATES for r in self.jobs))

    def poll(self) -> None:
        """Ask the scheduler about every submitted try; an event and a saved line for each change."""
        watched = submitted(self.manifest)
        if not watched:
            return
        before = [(r.state, r.message) for r in watched]
        for note in self.scheduler.poll(watched):
            say_note(note)
        changed = []
        for record, (state, message) in zip(watched, before, strict=True):
            if (record.state, record.message) == (state, message):
                continue
            changed.append(record)
            if record.state in NOT_RETRIED and self.plan.max_retries and isinstance(record, JobRecord):
                record.message = f"not retried: {NOT_RETRIED[record.state]}"
            exit_code = f" (exit {record.exit_code})" if record.exit_code is not None else ""
            said = f": {record.message}" if record.message and record.message != message else ""
            took = f" after {record.duration:.1f}s" if record.duration and record.state not in ACTIVE_STATES else ""
            self.view.event(record, record.state.lower() + exit_code + took + said,
                            notable=record.state not in ACTIVE_STATES | {COMPLETED} or bool(said))
        self.manifest.save(*changed, sync=False)

    def _retry_failed(self) -> None:
        again = [r for r in self.jobs if r.state in RETRIED_STATES and len(r.tries) < self.plan.max_retries]
        for record in again:
            where = f" on {record.node}" if record.node else ""
            self.view.event(record, f"{record.state.lower()}{where}; try {len(record.tries) + 2} next", notable=True)
            if record.state == "NODE_FAIL" and record.node:
                self.exclude.setdefault(record.variant, []).append(record.node)
            record.archive_try()
        self.manifest.save(*again)
        if again:
            fault_point("retry")

    def _interrupted(self, signals: _Signals) -> int:
        signum = signals.caught[0]
        why = signal.Signals(signum).name
        if signum == signal.SIGUSR1 or not self.detaches:  # `benchmark cancel`, or Ctrl-C on the local pool
            active = submitted(self.manifest)
            waiting = sum(r.state == PENDING for r in self.jobs)
            say(f"{why}: stopping {len(active)} running job(s); {waiting} not started")
            self._cancel(active, hurry=lambda: len(signals.caught) > 1)
            return 128 + (signal.SIGTERM if signum == signal.SIGUSR1 else signum)
        self._release_held(everything=True)  # nothing may stay held for good (the follow-up, under retries)
        say(f"{why}: stopped watching; submitted jobs go on. Stop them with: benchmark cancel {self.manifest.run_dir}")
        return 128 + signum

    def _cancel(self, active: list[Record], hurry: Callable[[], bool] | None = None) -> None:
        """Stop these tries and record them CANCELLED."""
        for note in self.scheduler.cancel(active, hurry):
            say_note(note)
        for record in active:
            record.state, record.end = CANCELLED, record.end or time.time()
        self.manifest.save(*active)

    @staticmethod
    def _job_id(record: Record) -> str:
        return f"pid {record.pid}" if record.pid else f"job {record.scheduler_id}"


def cancel(manifest: Manifest, scheduler: Scheduler) -> list[Record]:
    """Stop every job of a run no live harness owns (the caller holds the run dir): the records cancelled."""
    sweep = Sweep(manifest, scheduler)
    sweep.recover()
    active = submitted(manifest)
    sweep._cancel(active)
    return active


def submitted(manifest: Manifest) -> list[Record]:
    """The records whose try the scheduler has (held, queued or running)."""
    return [r for r in manifest.records() if r.state in SUBMITTED_STATES]


def settle_submitting(manifest: Manifest, scheduler: Scheduler) -> list[Record]:
    """The records left SUBMITTING, in memory: HELD or RUNNING where the scheduler has their submission,
    else PENDING again (the scheduler never had it: the same try goes again). The records changed."""
    by_token: dict[str, list[Record]] = {}
    for record in manifest.records():
        if record.state == SUBMITTING:
            by_token.setdefault(record.token or "", []).append(record)
    for token, group in by_token.items():
        found = scheduler.find(group, token)
        for record in group:
            if found:
                record.state = HELD if scheduler.holds else RUNNING
            else:
                record.state, record.token = PENDING, None
    return [r for group in by_token.values() for r in group]


def current(manifest: Manifest, scheduler: Scheduler) -> list[str]:
    """The records brought up to date with the scheduler, in memory only (for `status`); notes for the user."""
    settle_submitting(manifest, scheduler)
    watched = submitted(manifest)
    notes = scheduler.poll(watched) if watched else []
    held = sum(r.state == HELD for r in manifest.records())
    if held and run_dir_owner(manifest.run_dir) is None:
        notes.append(f"{held} job(s) HELD: the harness that submitted them died before releasing them; "
                     f"`benchmark resume {manifest.run_dir}` releases them")
    return notes


class _Signals:
    """SIGINT, SIGTERM and SIGUSR1 (`benchmark cancel`) are noted, never raised: the engine acts on them
    between steps, so a state change is never cut in half, and a second Ctrl-C only hurries the stop.
    A wakeup pipe ends any wait at once."""

    _HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __enter__(self) -> _Signals:
        self.caught: list[int] = []
        self.wakeup, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_fd = signal.set_wakeup_fd(self._write)
        self._previous = {s: signal.signal(s, lambda signum, _: self.caught.append(signum)) for s in self._HANDLED}
        return self

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.wakeup, 512)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self.wakeup)
        os.close(self._write)
