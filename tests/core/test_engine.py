"""The sweep engine against a fake scheduler, in milliseconds: retries, holds, the follow-up job, and a
crash at each step followed by a resume, with the scheduler's own count of how often each job ran.

The fake keeps its jobs across the crash, as a cluster would; a crash is an exception raised at the
engine's fault point, after which the manifest's file (and its lock) is dropped as a dead process's.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from benchmark import engine
from benchmark.backends import BackendError, Scheduler
from benchmark.engine import Sweep
from benchmark.manifest import COMPLETED, LOCK_NAME, FollowUpRecord, JobRecord, Manifest, Record, RunDirBusy
from benchmark.plan import Plan, SlurmSettings, Variant


class Crash(Exception):
    pass


class FakeCluster(Scheduler):
    """Held submissions named by token; a released job runs at the next poll and fails on its first run
    if its seed is in `flaky`."""

    holds = True

    def __init__(self, plan: Plan, run_dir: Path, flaky: tuple[int, ...] = (), refuse: bool = False) -> None:
        super().__init__(plan, run_dir)
        self.flaky = set(flaky)
        self.refuse = refuse
        self.by_token: dict[str, list[str]] = {}
        self.state: dict[str, str] = {}
        self.seed: dict[str, int] = {}
        self.runs: Counter[int] = Counter()  # successful runs per seed, as the jobs themselves would count
        self.released_followup = False

    def describe(self, records: list[JobRecord]) -> str:
        return ""

    def submit(self, records: list[JobRecord], token: str, prepared: object, exclude: list[str]) -> list[str]:
        if self.refuse:
            raise BackendError("sbatch: error: invalid partition specified: nope")
        ids = [f"{len(self.state) + i}" for i in range(len(records))]
        self.by_token[token] = ids
        for record, job in zip(records, ids, strict=True):
            self.state[job], self.seed[job], record.scheduler_id = "HELD", record.seed, job
        return []

    def submit_followup(self, followup: FollowUpRecord, after: list[Record], token: str) -> list[str]:
        self.by_token[token] = ["then"]
        self.state["then"], followup.scheduler_id = "HELD", "then"
        return []

    def find(self, records: list[Record], token: str) -> bool:
        if token not in self.by_token:
            return False
        for record, job in zip(records, self.by_token[token], strict=True):
            record.scheduler_id = job
        return True

    def release(self, records: list[Record]) -> str | None:
        for record in records:
            self.state[record.scheduler_id or ""] = "QUEUED"
        return None

    def poll(self, records: list[Record]) -> list[str]:
        for record in records:
            job = record.scheduler_id or ""
            if self.state[job] == "QUEUED":
                if job == "then":
                    self.released_followup = True
                    self.state[job] = COMPLETED
                elif self.seed[job] in self.flaky:
                    self.flaky.discard(self.seed[job])
                    self.state[job] = "FAILED"
                else:
                    self.runs[self.seed[job]] += 1
                    self.state[job] = COMPLETED
            if self.state[job] != "HELD":
                record.state = self.state[job]
        return []

    def wait(self, timeout: float, wakeup: int) -> None:
        pass

    def cancel(self, records: list[Record], hurry: object = None) -> list[str]:
        return []


def sweep_dir(tmp_path: Path, seeds: int = 4, retries: int = 1, then: str | None = "report") -> Manifest:
    plan = Plan(variants=(Variant("a", "train a"), Variant("b", "train b")), seeds=tuple(range(1, seeds + 1)),
                backend=SlurmSettings(wait=True, poll_interval=0, then=then), max_retries=retries)
    records = [JobRecord.from_job(job, "") for job in plan.jobs()]
    return Manifest.create(tmp_path / "r", plan, records, FollowUpRecord(command=then) if then else None)


def test_a_sweep_with_retries_runs_each_seed_once_and_the_follow_up_last(tmp_path: Path) -> None:
    manifest = sweep_dir(tmp_path)
    cluster = FakeCluster(manifest.plan, manifest.run_dir, flaky=(2, 3))
    assert Sweep(manifest, cluster).run() == 0
    assert cluster.runs == Counter({1: 2, 2: 2, 3: 2, 4: 2})  # two variants
    assert cluster.released_followup
    jobs = Manifest.load(manifest.run_dir).jobs
    assert {j.state for j in jobs.values()} == {COMPLETED}
    assert [t["state"] for t in jobs["a/2"].tries] == ["FAILED"]


def test_a_sweep_the_scheduler_refuses_whole_ends_and_its_follow_up_is_never_submitted(tmp_path: Path) -> None:
    manifest = sweep_dir(tmp_path)
    cluster = FakeCluster(manifest.plan, manifest.run_dir, refuse=True)
    assert Sweep(manifest, cluster).run() == 1
    loaded = Manifest.load(manifest.run_dir)
    assert {j.state for j in loaded.jobs.values()} == {"NOT_SUBMITTED"}
    assert loaded.followup is not None and loaded.followup.state == "PENDING" and not cluster.state


@pytest.mark.parametrize("step", ["intent", "submitted", "held", "released", "waiting", "retry"])
def test_a_crash_at_each_step_then_resume_runs_each_seed_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    manifest = sweep_dir(tmp_path)
    cluster = FakeCluster(manifest.plan, manifest.run_dir, flaky=(3,))

    def crash(at: str) -> None:
        if at == step:
            raise Crash(at)

    monkeypatch.setattr(engine, "fault_point", crash)
    with pytest.raises(Crash):
        Sweep(manifest, cluster).run()
    manifest.close()  # the dead harness's lock goes with it
    monkeypatch.setattr(engine, "fault_point", lambda at: None)

    resumed = Manifest.load(manifest.run_dir, own=True)
    sweep = Sweep(resumed, cluster)
    sweep.recover()
    sweep.rerun_unfinished()
    assert sweep.run() == 0
    assert cluster.runs == Counter({1: 2, 2: 2, 3: 2, 4: 2}), cluster.runs
    assert {j.state for j in Manifest.load(manifest.run_dir).jobs.values()} == {COMPLETED}


def test_a_second_owner_is_refused(tmp_path: Path) -> None:
    manifest = sweep_dir(tmp_path)
    with pytest.raises(RunDirBusy, match="is in use by pid"):
        Manifest.load(manifest.run_dir, own=True)
    manifest.close()
    Manifest.load(manifest.run_dir, own=True).close()


def test_a_second_owner_is_told_who_owns_the_run_dir_while_the_stamp_is_being_written(tmp_path: Path) -> None:
    """Between taking the lock and stamping it the owner's stamp is empty: the refused one waits for the stamp."""
    manifest = sweep_dir(tmp_path)
    manifest.close()
    holder = os.open(manifest.run_dir / LOCK_NAME, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    os.ftruncate(holder, 0)
    stamping = threading.Timer(0.2, os.pwrite, (holder, b"4242 2026-12-05 13:00:00\n", 0))
    stamping.start()
    with pytest.raises(RunDirBusy, match="is in use by pid 4242"):
        Manifest.load(manifest.run_dir, own=True)
    stamping.join()
    os.close(holder)
