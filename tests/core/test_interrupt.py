"""Stopping a sweep: Ctrl-C, SIGTERM, `cancel`, and a harness killed outright, then `resume`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import clean_env, cli_argv, records, run_cli, wait_for

# Starts a grandchild, notes both pids, then waits: stopping the job must stop both.
PARENT_AND_CHILD = (
    f"{sys.executable} -c \"import os, subprocess, sys, time; p = subprocess.Popen(['sleep', '300']); "
    "open('pids', 'a').write(f'{os.getpid()} {p.pid}\\n'); time.sleep(300)\""
)
# Notes its start, sleeps a while, notes its end: `ran` shows which seeds really finished.
SLOW = "slow=sh -c 'echo $2 >> started; sleep 1.5; echo $2 >> ran' job"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def start_harness(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        cli_argv(*args), cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_every_job_and_leaves_no_process(cwd: Path, signum: int) -> None:
    harness = start_harness(
        cwd, "--command", PARENT_AND_CHILD, "--num-seeds", "4", "--workers", "2", "--run-dir", "r",
        "--grace-period", "2",
    )
    wait_for(lambda: len(lines(cwd / "pids")) == 4, what="two running jobs")
    pids = [int(p) for p in lines(cwd / "pids")]
    assert all(alive(p) for p in pids)
    harness.send_signal(signum)
    output, _ = harness.communicate(timeout=30)
    assert harness.returncode == 128 + signum, output
    assert "stopping 2 running job(s); 2 not started" in output
    wait_for(lambda: not any(alive(p) for p in pids), timeout=5, what="jobs and their children to die")
    states = sorted(j["state"] for j in records(cwd / "r").values())
    assert states == ["CANCELLED", "CANCELLED", "PENDING", "PENDING"]


def test_jobs_get_sigterm_and_may_clean_up(cwd: Path) -> None:
    # The harness blocks SIGINT/SIGTERM for itself while it starts jobs; the jobs must not inherit that.
    tidy = (
        f"tidy={sys.executable} -c \"import signal, sys, time; "
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(open('tidied', 'w').write('cleaned up') and 3)); "
        "open('pids', 'w').write('1'); time.sleep(300)\""
    )
    harness = start_harness(cwd, "--command", tidy, "--num-seeds", "1", "--workers", "1", "--run-dir", "r",
                            "--grace-period", "30")
    wait_for(lambda: (cwd / "pids").exists(), what="the job")
    began = time.monotonic()
    harness.send_signal(signal.SIGINT)
    harness.communicate(timeout=60)
    assert time.monotonic() - began < 10, "the job only died at the end of the grace period: SIGTERM never reached it"
    assert lines(cwd / "tidied") == ["cleaned", "up"]


def test_job_ignoring_sigterm_is_killed_after_the_grace_period(cwd: Path) -> None:
    stubborn = "stubborn=sh -c 'trap \"\" TERM; echo $$ >> pids; while true; do sleep 0.1; done' job"
    harness = start_harness(cwd, "--command", stubborn, "--num-seeds", "1", "--workers", "1", "--run-dir", "r",
                            "--grace-period", "1")
    wait_for(lambda: (cwd / "pids").exists(), what="the job")
    pid = int(lines(cwd / "pids")[0])
    began = time.monotonic()
    harness.send_signal(signal.SIGINT)
    harness.communicate(timeout=30)
    assert 0.9 < time.monotonic() - began < 10
    wait_for(lambda: not alive(pid), timeout=5, what="the stubborn job to die")
    assert records(cwd / "r")["stubborn/1"]["state"] == "CANCELLED"


def test_cancel_stops_a_running_sweep(cwd: Path) -> None:
    harness = start_harness(cwd, "--command", PARENT_AND_CHILD, "--num-seeds", "3", "--workers", "1",
                            "--run-dir", "r", "--grace-period", "2")
    wait_for(lambda: (cwd / "pids").exists(), what="the first job")
    pids = [int(p) for p in lines(cwd / "pids")]
    refused = run_cli("resume", "r", cwd=cwd)
    assert refused.returncode == 2 and "r is in use by pid" in refused.stderr
    result = run_cli("cancel", "r", cwd=cwd)
    assert result.returncode == 0, result.stderr
    output, _ = harness.communicate(timeout=30)
    assert harness.returncode == 128 + signal.SIGTERM, output
    wait_for(lambda: not any(alive(p) for p in pids), timeout=5, what="the job to die")
    assert [j["state"] for j in records(cwd / "r").values()] == ["CANCELLED", "PENDING", "PENDING"]


def test_harness_killed_then_resume_runs_exactly_the_unfinished_seeds(cwd: Path) -> None:
    harness = start_harness(cwd, "--command", SLOW, "--num-seeds", "6", "--workers", "2", "--run-dir", "r")
    wait_for(lambda: len(lines(cwd / "started")) == 4, what="seeds 3 and 4 to start")
    harness.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    harness.wait()
    # The orphaned jobs run on and leave their exit codes behind.
    wait_for(lambda: len(lines(cwd / "ran")) == 4, what="the orphaned jobs to end")
    wait_for(lambda: len(list((cwd / "r" / "exit").iterdir())) == 4, what="the orphans' exit files")
    status = run_cli("status", "r", cwd=cwd)
    assert status.returncode == 0
    assert "4 COMPLETED, 2 PENDING" in status.stdout, status.stdout

    result = run_cli("resume", "r", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming 2 of 6 jobs" in result.stdout
    assert sorted(lines(cwd / "ran")) == ["1", "2", "3", "4", "5", "6"]
    assert {j["state"] for j in records(cwd / "r").values()} == {"COMPLETED"}
    assert "nothing to resume" in run_cli("resume", "r", cwd=cwd).stdout


def test_jobs_that_died_with_the_harness_are_lost_and_resumed(cwd: Path) -> None:
    blocking = "blocking=sh -c 'echo $2 >> started; if [ -e block ]; then sleep 300; fi; echo $2 >> ran' job"
    (cwd / "block").touch()
    harness = start_harness(cwd, "--command", blocking, "--num-seeds", "3", "--workers", "2", "--run-dir", "r")
    wait_for(lambda: len(lines(cwd / "started")) == 2, what="two running jobs")
    harness.kill()
    harness.wait()
    # As if the machine went down: the jobs die with the harness and leave no exit code.
    leaders = [j["pid"] for j in records(cwd / "r").values() if j["pid"]]
    for pid in leaders:
        os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in leaders), timeout=5, what="the jobs to die")
    status = run_cli("status", "r", cwd=cwd)
    assert "2 LOST, 1 PENDING" in status.stdout, status.stdout

    (cwd / "block").unlink()
    result = run_cli("resume", "r", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(lines(cwd / "ran")) == ["1", "2", "3"]
    jobs = records(cwd / "r")
    assert {j["state"] for j in jobs.values()} == {"COMPLETED"}
    assert sorted(t["state"] for j in jobs.values() for t in j["tries"]) == ["LOST", "LOST"]


def test_a_second_ctrl_c_kills_at_once_and_still_records_every_job(cwd: Path) -> None:
    stubborn = "stubborn=sh -c 'trap \"\" TERM; echo $$ >> pids; while true; do sleep 0.1; done' job"
    harness = start_harness(cwd, "--command", stubborn, "--num-seeds", "3", "--workers", "2", "--run-dir", "r",
                            "--grace-period", "60")
    wait_for(lambda: len(lines(cwd / "pids")) == 2, what="two jobs")
    pids = [int(p) for p in lines(cwd / "pids")]
    began = time.monotonic()
    harness.send_signal(signal.SIGINT)
    time.sleep(0.5)
    harness.send_signal(signal.SIGINT)  # impatient: no 60 s of grace
    output, _ = harness.communicate(timeout=30)
    assert time.monotonic() - began < 15, output
    assert harness.returncode == 128 + signal.SIGINT and "Traceback" not in output, output
    wait_for(lambda: not any(alive(p) for p in pids), timeout=5, what="the jobs to die")
    assert sorted(j["state"] for j in records(cwd / "r").values()) == ["CANCELLED", "CANCELLED", "PENDING"]
