"""Every seed exactly once on the local pool, whatever single fault lands between two steps.

Kills land at a named step through the harness's fault hook (BENCHMARK_FAULT=STEP[:N]: it SIGKILLs
itself there), never at a moment left to chance. The tasks' own markers are counted, not the manifest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli import clean_env, cli_argv, records, run_cli, wait_for
from exactly_once import assert_exactly_once, marking, runs


def launch(cwd: Path, command: str, seeds: int, *args: str, fault: str | None = None) -> subprocess.Popen:
    env = clean_env(**({"BENCHMARK_FAULT": fault} if fault else {}))
    return subprocess.Popen(cli_argv("--command", f"v={command}", "--num-seeds", str(seeds), "--run-dir", "r", *args),
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def resume_until_done(cwd: Path, tries: int = 5) -> None:
    for _ in range(tries):
        result = run_cli("resume", "r", cwd=cwd, timeout=180)
        assert result.returncode in (0, 1), result.stdout + result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        if "nothing to resume" in result.stdout:
            return
    raise AssertionError(f"not done after {tries} resumes")


@pytest.mark.parametrize("step", ["planned", "intent", "submitted:2", "waiting:3", "retry"])
def test_a_harness_killed_at_each_step_then_resumed_runs_every_seed_exactly_once(cwd: Path, step: str) -> None:
    markers = cwd / "markers"
    seeds = list(range(1, 25))
    harness = launch(cwd, marking(markers, fail_first_try_of=(3, 7, 16, 20)), len(seeds), "--workers", "4",
                     "--max-retries", "1", fault=step)
    output, _ = harness.communicate(timeout=120)
    assert harness.returncode == -signal.SIGKILL, output
    resume_until_done(cwd)
    assert_exactly_once(markers, seeds)
    assert {j["state"] for j in records(cwd / "r").values()} == {"COMPLETED"}


def test_jobs_running_when_the_harness_died_mid_wave_are_adopted_not_started_again(cwd: Path) -> None:
    # D2: killed right after spawning a wave, before recording it: the jobs run on, and resume waits for them.
    markers = cwd / "markers"
    harness = launch(cwd, marking(markers, sleep=2), 8, "--workers", "4", fault="submitted")
    harness.communicate(timeout=60)
    assert harness.returncode == -signal.SIGKILL
    states = {j["state"] for j in records(cwd / "r").values()}
    assert states == {"SUBMITTING", "PENDING"}, states  # the wave's intent is on disk, its outcome is not
    status = run_cli("status", "r", cwd=cwd)
    assert "4 RUNNING" in status.stdout and "LOST" not in status.stdout, status.stdout
    result = run_cli("resume", "r", cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "adopted" in result.stdout
    assert_exactly_once(markers, list(range(1, 9)))


def test_a_second_resume_or_launch_on_a_live_run_dir_is_refused(cwd: Path) -> None:
    # D1: one owner of a run dir at a time; the second command says who, and exits 2 at once.
    markers = cwd / "markers"
    harness = launch(cwd, marking(markers, sleep=1), 6, "--workers", "2", fault="waiting")
    harness.communicate(timeout=60)
    first = subprocess.Popen(cli_argv("resume", "r"), cwd=cwd, env=clean_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (cwd / "r" / ".lock").exists() and str(first.pid) in (cwd / "r" / ".lock").read_text(),
             what="the first resume to own the run dir")
    began = time.monotonic()
    second = run_cli("resume", "r", cwd=cwd)
    relaunch = run_cli("--command", "true", "--workers", "1", "--run-dir", "r", cwd=cwd)
    assert time.monotonic() - began < 20  # refused at once, never waiting
    assert second.returncode == 2 and f"r is in use by pid {first.pid}" in second.stderr, second.stderr
    assert relaunch.returncode == 2 and "already exists" in relaunch.stderr, relaunch.stderr
    output, _ = first.communicate(timeout=60)
    assert first.returncode == 0, output
    assert_exactly_once(markers, list(range(1, 7)))


def test_simultaneous_resumes_run_each_seed_once(cwd: Path) -> None:
    markers = cwd / "markers"
    harness = launch(cwd, marking(markers, sleep=0.5), 10, "--workers", "2", fault="intent:2")
    harness.communicate(timeout=60)
    racing = [subprocess.Popen(cli_argv("resume", "r"), cwd=cwd, env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outcomes = [(p.wait(timeout=120), p.stdout.read() if p.stdout else "") for p in racing]
    assert sorted(code for code, _ in outcomes) == [0, 2, 2], outcomes
    assert_exactly_once(markers, list(range(1, 11)))


def test_a_finished_job_of_a_killed_harness_not_yet_reaped_is_recorded_completed(cwd: Path) -> None:
    # D10: the harness is SIGKILLed and left a zombie (its parent has not reaped it); its jobs end meanwhile.
    markers = cwd / "markers"
    harness = launch(cwd, marking(markers, sleep=1.5), 2, "--workers", "2")
    wait_for(lambda: len(runs(markers)[1]) == 2, what="both jobs to start")
    os.kill(harness.pid, signal.SIGKILL)
    wait_for(lambda: sum(runs(markers)[0].values()) == 2, what="both jobs to end")
    # Not reaped before the checks below (no wait(), no poll()): the harness is a zombie all along.
    status = run_cli("status", "r", cwd=cwd)
    assert "2 COMPLETED" in status.stdout, status.stdout
    result = run_cli("resume", "r", cwd=cwd)
    assert "nothing to resume" in result.stdout, result.stdout
    harness.wait()
    assert_exactly_once(markers, [1, 2])


def test_a_torn_last_line_is_cut_before_the_next_append(cwd: Path) -> None:
    # D4's aftermath: a write cut short left half a line; resume must not append onto it.
    launched = run_cli("--command", "v=true", "--num-seeds", "3", "--workers", "1", "--run-dir", "r", cwd=cwd)
    assert launched.returncode == 0
    path = cwd / "r" / "manifest.jsonl"
    lines = path.read_text().splitlines()
    last = json.loads(lines[-1])
    last["job"]["state"], last["job"]["exit_code"] = "FAILED", 1
    path.write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n" + '{"job": {"id": "v/1", "sta')
    result = run_cli("resume", "r", cwd=cwd)
    assert result.returncode == 0 and "resuming 1 of 3 jobs" in result.stdout, result.stdout + result.stderr
    for command in (("status", "r"), ("resume", "r")):
        again = run_cli(*command, cwd=cwd)
        assert again.returncode == 0, again.stderr
    assert "3 COMPLETED" in run_cli("status", "r", cwd=cwd).stdout
    assert path.read_text().endswith("}}\n")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MB tmpfs: a full disk, for real (root only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_kb: int) -> Path:
    """Fill the disk but `leave_kb`; the filler, to free the space again."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave_kb * 1024))
    return filler


def test_a_full_disk_mid_sweep_stops_with_a_clear_error_and_resume_finishes_it(small_disk: Path, cwd: Path) -> None:
    # D4: the manifest stays whole; once space is freed, resume goes on and status reads it.
    filler = fill(small_disk, leave_kb=64)
    run_dir = small_disk / "r"
    result = run_cli("--command", "v=true", "--num-seeds", "40", "--workers", "2", "--run-dir", str(run_dir),
                     cwd=cwd)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr and "benchmark resume" in result.stderr, result.stderr
    assert (run_dir / "manifest.jsonl").read_text().endswith("\n")
    filler.unlink()
    for _ in range(3):
        resumed = run_cli("resume", str(run_dir), cwd=cwd)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        if "nothing to resume" in resumed.stdout:
            break
    status = run_cli("status", str(run_dir), cwd=cwd)
    assert status.returncode == 0 and "40 COMPLETED" in status.stdout, status.stdout + status.stderr


def test_a_full_disk_at_launch_is_an_error_line(small_disk: Path, cwd: Path) -> None:
    fill(small_disk, leave_kb=0)
    result = run_cli("--command", "v=true", "--num-seeds", "400", "--workers", "2",
                     "--run-dir", str(small_disk / "r"), cwd=cwd)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "No space left on device" in result.stderr, result.stderr


def test_resume_with_no_workers_is_refused(cwd: Path) -> None:
    assert run_cli("--command", "v=false", "--num-seeds", "1", "--workers", "1", "--run-dir", "r",
                   cwd=cwd).returncode == 1
    result = run_cli("resume", "r", "--workers", "0", cwd=cwd)
    assert result.returncode == 2 and "--workers must be at least 1" in result.stderr, result.stderr


def test_a_run_dir_whose_manifest_cannot_be_read_is_an_error_line(cwd: Path) -> None:
    (cwd / "r" / "manifest.jsonl").mkdir(parents=True)
    for command in ("status", "resume", "cancel"):
        result = run_cli(command, "r", cwd=cwd)
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr
