"""`benchmark status`: counts per variant, then the jobs that need a look; `--all` lists every job."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from cli import clean_env, cli_argv, records, run_cli

FAILS_SEED_2 = "sh -c 'test $2 != 2' x"


def sweep(cwd: Path) -> str:
    """A local sweep of three seeds in which seed 2 fails; the name of its variant."""
    result = run_cli("--command", FAILS_SEED_2, "--num-seeds", "3", "--workers", "1", "--run-dir", "r", cwd=cwd)
    assert result.returncode == 1, result.stdout + result.stderr
    (variant,) = {job["variant"] for job in records(cwd / "r").values()}
    return variant


def append(run_dir: Path, *entries: dict) -> None:
    """Later snapshots, as the harness appends them: the last one of a job wins."""
    with open(run_dir / "manifest.jsonl", "a") as f:
        f.writelines(json.dumps(entry) + "\n" for entry in entries)


def copies(run_dir: Path, seeds: range, **changes: object) -> list[dict]:
    """Jobs like seed 1 of the sweep, with more seeds: a big run without running it."""
    first = next(iter(records(run_dir).values()))
    return [{"job": first | {"id": f"{first['variant']}/{seed}", "seed": seed, **changes}} for seed in seeds]


def test_status_counts_each_variant_and_lists_only_the_jobs_not_completed(cwd: Path) -> None:
    variant = sweep(cwd)
    result = run_cli("status", "r", cwd=cwd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "r: 2 COMPLETED, 1 FAILED"
    assert lines[1].split() == ["variant", "COMPLETED", "FAILED", "total"]
    assert lines[2].split() == [variant, "2", "1", "3"]
    rows = [line for line in lines if f"r/logs/{variant}/seed-" in line]
    assert len(rows) == 1, result.stdout
    assert rows[0].split()[:4] == [variant, "2", "FAILED", "1"] and f"r/logs/{variant}/seed-2.log" in rows[0]


def test_status_all_lists_every_job(cwd: Path) -> None:
    variant = sweep(cwd)
    result = run_cli("status", "r", "--all", cwd=cwd)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if f"r/logs/{variant}/seed-" in line]
    assert [row[:4] for row in rows] == [
        [variant, "1", "COMPLETED", "0"], [variant, "2", "FAILED", "1"], [variant, "3", "COMPLETED", "0"],
    ]


def test_many_failures_are_cut_short_and_their_shared_message_said_once(cwd: Path) -> None:
    variant = sweep(cwd)
    run_dir = cwd / "r"
    append(run_dir, *copies(run_dir, range(4, 204), state="FAILED", exit_code=1, message="node failure"))
    append(run_dir, {"followup": {"command": "echo report", "state": "COMPLETED", "exit_code": 0}})
    result = run_cli("status", "r", cwd=cwd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "r: 3 COMPLETED, 201 FAILED"
    assert lines[2].split() == [variant, "2", "201", "203"] and lines[3].split() == ["(--then)", "1", "-", "1"]
    assert lines[4].split() == ["total", "3", "201", "204"]
    failed = [line for line in lines if line.startswith(variant) and " FAILED " in line]
    assert len(failed) == 50 and failed[0].split()[1] == "2"  # in the order of the run, capped
    assert "... and 151 more (benchmark status r --all)" in lines
    assert any(line.startswith("(--then)") and "COMPLETED" in line for line in lines)  # the follow-up, always
    assert f"200 jobs ({variant}/4, {variant}/5, {variant}/6, ...): node failure" in lines
    assert "node failure" not in "\n".join(line for line in lines if not line.startswith("200 jobs"))

    every = run_cli("status", "r", "--all", cwd=cwd)
    assert len([line for line in every.stdout.splitlines() if f"r/logs/{variant}/" in line]) == 203
    assert "more (benchmark status" not in every.stdout


def test_status_piped_into_head_exits_quietly(cwd: Path) -> None:
    sweep(cwd)
    # Far more than a pipe holds (64 KiB), so that status writes on after head has gone.
    append(cwd / "r", *copies(cwd / "r", range(4, 3004)))
    command = f"{shlex.join(cli_argv('status', 'r', '--all'))} | head -1"
    result = subprocess.run(command, shell=True, cwd=cwd, env=clean_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.stdout == "r: 3002 COMPLETED, 1 FAILED\n"
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr
