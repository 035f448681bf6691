"""Local backend: a pool of at most `workers` subprocesses, each on its own GPU(s).

Each job runs through a tiny sh wrapper that writes the job's exit code to RUN_DIR/exit/<pid> when
the harness is gone, so a job that outlives a killed harness still records how it ended. Each job is
its own process group, so stopping a job stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmark.backends import Backend, name_wandb_run, settle_process, task_env, variant_env
from benchmark.manifest import CANCELLED, COMPLETED, EXIT_DIR, FAILED, RUNNING, JobRecord, Manifest, exit_file
from benchmark.plan import LocalSettings, Plan
from benchmark.procs import is_alive, live_harness, process_start, stop_process_trees
from benchmark.redact import Redactor
from benchmark.view import SweepView, final_summary, say

# `eval "$1"` runs the command exactly as `sh -c` would; the EXIT trap writes its exit code (to
# $2/<its pid>) even when the command itself calls `exit`, but only if the harness ($3) is gone: a
# live one records it from wait(), and a file per job costs a file creation (up to 1 ms on a busy
# ext4, a round trip on NFS). A job that ends in the very moment the harness dies is LOST, and resumed.
_WRAPPER = 'trap \'code=$?; kill -0 "$3" 2>/dev/null || echo $code > "$2/$$"\' EXIT; eval "$1"'
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class GpuSlots:
    """Which GPUs are free: each GPU takes at most `jobs_per_gpu` jobs at once."""

    def __init__(self, gpus: list[str], jobs_per_gpu: int) -> None:
        self.free = Counter({gpu: jobs_per_gpu for gpu in gpus})

    def take(self, count: int) -> list[str] | None:
        # Fill the emptiest GPUs first, so jobs spread out before they double up.
        chosen = [gpu for gpu, n in self.free.most_common(count) if n > 0]
        if len(chosen) < count:
            return None
        self.free.subtract(chosen)
        return chosen

    def give_back(self, gpus: list[str]) -> None:
        self.free.update(gpus)


def log_dir(variant: str) -> str:
    """The variant's folder of logs, relative to the run dir."""
    return "logs/" + "".join(c if c.isalnum() or c in "._+-" else "_" for c in variant)


def log_path(variant: str, seed: int, try_number: int) -> str:
    suffix = f".try{try_number}" if try_number > 1 else ""
    return f"{log_dir(variant)}/seed-{seed}{suffix}.log"


class LocalBackend(Backend):
    def __init__(self, plan: Plan) -> None:
        assert isinstance(plan.backend, LocalSettings)
        self.settings = plan.backend

    def describe(self, run_dir: Path, plan: Plan, records: list[JobRecord]) -> str:
        settings, width = self.settings, self.settings.concurrency
        slots = GpuSlots(list(settings.gpus), settings.jobs_per_gpu)
        lines = [f"local pool: {width} at a time, GPUs: {','.join(settings.gpus) or 'none'}"]
        for i, record in enumerate(records):
            # The first wave's GPUs are known; later jobs take whichever GPUs free up first.
            gpus = slots.take(settings.gpus_per_job) if settings.gpus and i < width else None
            where = f"gpu {','.join(gpus)}" if gpus else ("next free gpu" if settings.gpus else "no gpu")
            lines.append(f"{record.id}  [{where}]  log {run_dir / record.log}\n  $ {record.command}")
        return "\n".join(lines)

    def launch(self, manifest: Manifest, ids: list[str]) -> int:
        return _Pool(manifest, self.settings, ids).run()

    def refresh(self, manifest: Manifest) -> str | None:
        for record in manifest.jobs.values():
            if record.state == RUNNING and not is_alive(record.pid, record.pid_start):
                settle_process(manifest.run_dir, record)
        return None

    def cancel(self, manifest: Manifest) -> int:
        harness = live_harness(manifest.run_dir)
        if harness:
            # The live harness stops its own jobs and records them: the same path as Ctrl-C.
            os.kill(harness, signal.SIGTERM)
            say(f"asked the harness (pid {harness}) to stop; it cancels its running jobs")
            return 0
        victims = [r for r in manifest.jobs.values() if r.state == RUNNING and is_alive(r.pid, r.pid_start)]
        stop_process_trees([r.pid for r in victims if r.pid], manifest.plan.grace_period)
        for record in victims:
            record.state, record.end = CANCELLED, time.time()
        manifest.save(*victims)
        say(f"cancelled {len(victims)} running job(s)")
        return 0


class _Pool:
    def __init__(self, manifest: Manifest, settings: LocalSettings, ids: list[str]) -> None:
        self.manifest = manifest
        self.run_dir = manifest.run_dir
        self.settings = settings
        self.width = settings.concurrency
        self.slots = GpuSlots(list(settings.gpus), settings.jobs_per_gpu)
        self.queue = deque(manifest.jobs[i] for i in ids)
        self.running: dict[int, tuple[JobRecord, list[str]]] = {}
        self.starter = ThreadPoolExecutor(max_workers=self.width, thread_name_prefix="benchmark-start")
        self.redactor = Redactor()
        self.pid = str(os.getpid())
        self.exit_dir = str(self.run_dir / EXIT_DIR)
        self.env = dict(os.environ)
        variants = {record.variant for record in self.queue}
        self.variant_env = {v: variant_env(manifest.plan, self.run_dir, v, os.environ) for v in variants}
        self.workdir = {v: manifest.plan.workdir(self.run_dir, v) for v in variants}
        self.view = SweepView([manifest.jobs[i] for i in ids], self.redactor)
        (self.run_dir / EXIT_DIR).mkdir(exist_ok=True)
        for variant in self.variant_env:
            (self.run_dir / log_dir(variant)).mkdir(parents=True, exist_ok=True)

    def run(self) -> int:
        if self.width < self.settings.workers:
            say(f"running {self.width} at a time: that is as many jobs as the GPUs take")
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            with self.view:
                self._loop()
        except (KeyboardInterrupt, Interrupted) as stop:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
            self._stop_all(signal.Signals(signum).name)
            return 128 + signum
        finally:
            self.starter.shutdown()
            signal.signal(signal.SIGTERM, previous)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        return self._summary()

    def _loop(self) -> None:
        # Signals are blocked while records change and let through only while waiting, so a Ctrl-C
        # never falls between starting a process and recording its pid.
        while self.queue or self.running:
            self._start_wave()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            ended = [os.wait()]
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            ended += _ended_children()
            finished = [self._finish(pid, os.waitstatus_to_exitcode(status)) for pid, status in ended
                        if pid in self.running]
            self.manifest.save(*finished, sync=False)

    def _start_wave(self) -> None:
        """Start as many queued jobs as slots allow, recorded durably (one fsync) before any runs."""
        wave: list[tuple[JobRecord, list[str]]] = []
        while self.queue and len(self.running) + len(wave) < self.width:
            gpus = self.slots.take(self.settings.gpus_per_job) if self.settings.gpus else []
            if gpus is None:
                break
            record = self.queue.popleft()
            record.log = log_path(record.variant, record.seed, len(record.tries) + 1)
            record.state, record.start, record.gpus = RUNNING, time.time(), ",".join(gpus) or None
            name_wandb_run(record)
            wave.append((record, gpus))
        if not wave:
            return
        records = [record for record, _ in wave]
        self.manifest.save(*records)
        # Started from threads, as TRL's pool does: while one start waits for its child to exec, the
        # others go on, which matters most on a loaded machine (2.5x faster starts with 2 busy cores).
        for (record, gpus), (pid, pid_start) in zip(wave, self.starter.map(self._spawn, records), strict=True):
            record.scheduler_id, record.pid_start = str(pid), pid_start
            self.running[pid] = (record, gpus)
            self.view.event(record, f"started{f' on gpu {record.gpus}' if gpus else ''}, pid {pid}")
        self.manifest.save(*records, sync=False)

    def _spawn(self, record: JobRecord) -> tuple[int, int | None]:
        """Start the job: its pid, and the pid's start time, read here in parallel with other starts."""
        env = self.env | self.variant_env[record.variant] | task_env(record, self.env)
        if record.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = record.gpus
        with open(self.run_dir / record.log, "wb") as out:
            process = subprocess.Popen(
                ["/bin/sh", "-c", _WRAPPER, "sh", record.command, self.exit_dir, self.pid],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=self.workdir[record.variant], start_new_session=True,
            )
        # The harness reaps its children with os.wait(). A Popen that thinks its child still runs
        # would reap it behind our back (subprocess polls such objects), stealing the exit status.
        process.returncode = 0
        # An exit file left by an earlier process with this pid would end the job in `status`.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(exit_file(self.run_dir, str(process.pid)))
        return process.pid, process_start(process.pid)

    def _finish(self, pid: int, exit_code: int) -> JobRecord:
        record, gpus = self.running.pop(pid)
        self.slots.give_back(gpus)
        record.end, record.exit_code = time.time(), exit_code
        record.state = COMPLETED if exit_code == 0 else FAILED
        took = f"{record.end - (record.start or record.end):.1f}s"
        if record.state == FAILED and len(record.tries) < self.manifest.plan.max_retries:
            self.view.event(record, f"failed with exit code {exit_code} after {took}; retrying", notable=True)
            record.archive_try()
            self.queue.append(record)
        else:
            outcome = f"{record.state.lower()} (exit {exit_code}) after {took}"
            self.view.event(record, outcome, notable=record.state == FAILED)
        return record

    def _stop_all(self, why: str) -> None:
        say(f"{why}: stopping {len(self.running)} running job(s); {len(self.queue)} not started")
        stop_process_trees(list(self.running), self.manifest.plan.grace_period)
        for pid, (record, _) in self.running.items():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            record.state, record.end = CANCELLED, time.time()
        self.manifest.save(*(record for record, _ in self.running.values()))
        self.running.clear()

    def _summary(self) -> int:
        return final_summary(self.view.records, self.run_dir, self.redactor, time.time() - self.view.started)


def _ended_children() -> list[tuple[int, int]]:
    """Every child that has ended by now, without waiting: their slots refill in one wave."""
    ended = []
    with contextlib.suppress(ChildProcessError):
        while (child := os.waitpid(-1, os.WNOHANG))[0]:
            ended.append(child)
    return ended


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)

