"""Every seed exactly once on the lab Slurm, whatever single fault lands between two steps.

A kill lands at a named step through the harness's fault hook (BENCHMARK_FAULT=STEP[:N]), a slow or
lying Slurm command through a stand-in first on PATH: the window is hit every time. The tasks' own
markers are counted, not the manifest.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from cli import REPO, clean_env, cli_argv, records, run_cli
from exactly_once import assert_exactly_once, marking

from benchmark.backends import slurm

pytestmark = pytest.mark.slurm
TEMPLATE = str(REPO / "templates" / "trl.slurm_template")
SLURM = ("--workers", "10", "--slurm-template-path", TEMPLATE, "--slurm-total-cpus", "1", "--slurm-gpus-per-task", "0",
         "--poll-interval", "0.3", "--run-dir", "r")


def launch(cwd: Path, command: str, seeds: int, *args: str, env: dict[str, str] | None = None) -> int:
    result = subprocess.run(cli_argv("--command", f"v={command}", "--num-seeds", str(seeds), *SLURM, *args),
                            cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=180)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode


def resume_until_done(cwd: Path, env: dict[str, str] | None = None, tries: int = 5) -> None:
    for _ in range(tries):
        result = run_cli("resume", "r", cwd=cwd, env=env, timeout=180)
        assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stdout + result.stderr
        if "nothing to resume" in result.stdout:
            return
    raise AssertionError(f"not done after {tries} resumes")


def stand_in(folder: Path, name: str, body: str) -> dict[str, str]:
    """An environment whose PATH finds `name` in `folder` first, running `body` (sh); $REAL is the real one."""
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(f"#!/bin/sh\nREAL={shutil.which(name)}\n{body}\n")
    script.chmod(0o755)
    return clean_env(PATH=f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("step", ["planned", "intent", "submitted", "held", "released", "waiting:2", "retry"])
def test_a_harness_killed_at_each_step_then_resumed_runs_every_seed_exactly_once(tmp_path: Path, step: str) -> None:
    markers = tmp_path / "markers"
    seeds = list(range(1, 13))
    code = launch(tmp_path, marking(markers, fail_first_try_of=(2, 5, 11), sleep=0.2), len(seeds), "--wait",
                  "--max-retries", "1", env=clean_env(BENCHMARK_FAULT=step))
    assert code == -signal.SIGKILL
    resume_until_done(tmp_path)
    assert_exactly_once(markers, seeds)
    assert {j["state"] for j in records(tmp_path / "r").values()} == {"COMPLETED"}


def test_tasks_left_held_by_a_dead_harness_are_named_and_released_by_resume(tmp_path: Path) -> None:
    # D3: killed between `sbatch --hold` (recorded) and `scontrol release`.
    markers = tmp_path / "markers"
    assert launch(tmp_path, marking(markers), 3, "--wait", env=clean_env(BENCHMARK_FAULT="held")) == -signal.SIGKILL
    status = run_cli("status", "r", cwd=tmp_path)
    assert "3 HELD" in status.stdout and "benchmark resume r` releases them" in status.stdout, status.stdout
    resumed = run_cli("resume", "r", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "submitted job array" not in resumed.stdout  # released, not submitted again
    assert "3/3 jobs completed" in resumed.stdout
    assert_exactly_once(markers, [1, 2, 3])


def test_an_array_submitted_just_before_the_harness_died_is_found_by_its_token(tmp_path: Path) -> None:
    # Killed after sbatch answered, before its job id was recorded: resume finds the array, never submits twice.
    markers = tmp_path / "markers"
    code = launch(tmp_path, marking(markers), 3, "--wait", env=clean_env(BENCHMARK_FAULT="submitted"))
    assert code == -signal.SIGKILL
    assert {j["state"] for j in records(tmp_path / "r").values()} == {"SUBMITTING"}
    resumed = run_cli("resume", "r", cwd=tmp_path, timeout=120)
    assert resumed.returncode == 0 and "adopted" in resumed.stdout, resumed.stdout + resumed.stderr
    resume_until_done(tmp_path)
    assert_exactly_once(markers, [1, 2, 3])
    assert len({j["scheduler_id"].split("_")[0] for j in records(tmp_path / "r").values()}) == 1


def test_two_resumes_at_once_submit_one_array(tmp_path: Path) -> None:
    # D1: sacct slowed down, so both would pass any check made before claiming the run dir.
    markers = tmp_path / "markers"
    assert launch(tmp_path, marking(markers, fail_first_try_of=(1, 2, 3)), 3, "--wait") == 1
    env = stand_in(tmp_path / "bin", "sacct", 'sleep 2; exec "$REAL" "$@"')
    racing = [subprocess.Popen(cli_argv("resume", "r"), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=180), *p.communicate()) for p in racing]
    assert sorted(code for code, _, _ in outcomes) == [0, 2], outcomes
    refused = next(err for code, _, err in outcomes if code == 2)
    assert "r is in use by pid" in refused
    assert_exactly_once(markers, [1, 2, 3])


def test_a_stale_range_row_of_sacct_does_not_hide_the_tasks_own_rows(tmp_path: Path) -> None:
    # D9: while a slurmd is down, sacct may list a range row such as `455_[0-2]` PENDING beside the tasks' rows.
    assert launch(tmp_path, "true", 3, "--wait") == 0
    array = records(tmp_path / "r")["v/1"]["scheduler_id"].split("_")[0]
    env = stand_in(tmp_path / "bin", "sacct",
                   f'"$REAL" "$@"; echo "{array}_[0-2%16]|{array}|PENDING|0:0|None assigned|Unknown|Unknown"')
    status = run_cli("status", "r", "--all", cwd=tmp_path, env=env)
    assert "3 COMPLETED" in status.stdout and "PENDING" not in status.stdout, status.stdout


def test_sbatch_stuck_retrying_says_what_slurm_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # D12: at MaxJobCount sbatch retries in silence for minutes; the harness's timeout names Slurm's words.
    said = "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying"
    env = stand_in(tmp_path / "bin", "sbatch", f'echo "{said}" >&2; exec sleep 30')
    monkeypatch.setattr(slurm, "_TIMEOUT_S", 1)
    with pytest.raises(slurm.SlurmError, match="did not answer within 1 s: sbatch: error: Slurm temporarily unable"):
        slurm.run_slurm(["sbatch", "x.sh"], env=env)
