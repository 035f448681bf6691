"""Launching sweeps on the local pool through the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

from cli import clean_env, cli_argv, records, run_cli

# A job that records, from its own point of view, when it ran, with which seed and which GPUs.
JOB = textwrap.dedent(
    """
    import json, os, sys, time
    seed = int(sys.argv[sys.argv.index("--seed") + 1])
    start = time.time()
    time.sleep(float(os.environ.get(f"JOB_SLEEP_SEED{seed}", os.environ.get("JOB_SLEEP", "0.3"))))
    line = {"seed": seed, "start": start, "end": time.time(), "argv": sys.argv[1:],
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "env": {k: os.environ.get(k) for k in ("BENCHMARK_SEED", "BENCHMARK_VARIANT", "WANDB_RUN_GROUP",
                                                   "WANDB_NAME", "WANDB_RUN_ID", "WANDB_TAGS")}}
    with open(os.environ["JOB_OUT"], "a") as f:
        f.write(json.dumps(line) + "\\n")
    print("job ran with seed", seed)
    """
)


def write_job(cwd: Path) -> str:
    (cwd / "job.py").write_text(JOB)
    return f"{sys.executable} job.py"


def job_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def max_overlap(lines: list[dict]) -> int:
    events = sorted([(x["start"], 1) for x in lines] + [(x["end"], -1) for x in lines])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_workers_zero_prints_commands_like_trl(cwd: Path) -> None:
    result = run_cli("--command", "python train.py --lr 'a b'", "--num-seeds", "2", "--start-seed", "5", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["python train.py --lr 'a b' --seed 5", "python train.py --lr 'a b' --seed 6"]
    assert not (cwd / "runs").exists()


def test_variants_times_seeds_with_names_and_quoting(cwd: Path) -> None:
    result = run_cli(
        "--command", "small=python train.py --msg 'hello world'",
        "--command", "python -m trl_ppo.ppo --ppo_config.exp_name grad_accum --ppo_config.log_with wandb",
        "--command", "python -m trl_ppo.ppo --use_peft",
        "--command", "CUDA_LAUNCH_BLOCKING=1 python -m trl_ppo.ppo --use_peft",
        "--num-seeds", "2", "--seed-flag=--ppo_config.seed", "--workers", "2", "--dry-run", "--run-dir", "r",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for job, command in [
        ("small/1", "python train.py --msg 'hello world' --ppo_config.seed 1"),
        ("small/2", "python train.py --msg 'hello world' --ppo_config.seed 2"),
        ("grad_accum/1", "python -m trl_ppo.ppo --ppo_config.exp_name grad_accum --ppo_config.log_with wandb "
                         "--ppo_config.seed 1"),
        ("trl_ppo.ppo-use_peft/2", "python -m trl_ppo.ppo --use_peft --ppo_config.seed 2"),
        # Same slug twice: numbered, and the environment assignment is not mistaken for a name.
        ("trl_ppo.ppo-use_peft-2/1", "CUDA_LAUNCH_BLOCKING=1 python -m trl_ppo.ppo --use_peft --ppo_config.seed 1"),
    ]:
        # Each job's line names its log; the line under it is its full command.
        (at,) = [i for i, line in enumerate(lines) if line.startswith(f"{job}  [")]
        variant, seed = job.split("/")
        assert lines[at].endswith(f"log r/logs/{variant}/seed-{seed}.log") and lines[at + 1] == f"  $ {command}", (
            lines[at : at + 2]
        )
    assert sum(line.startswith("  $ ") for line in lines) == 8


def test_dry_run_starts_nothing(cwd: Path) -> None:
    result = run_cli("--command", "touch ran", "--workers", "2", "--dry-run", "--gpus", "0,1", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "touch ran --seed 1" in result.stdout and "[gpu 0]" in result.stdout and "[gpu 1]" in result.stdout
    assert "[next free gpu]" in result.stdout  # the third job waits for a GPU to free up
    assert not (cwd / "ran").exists() and not (cwd / "runs").exists()


def test_concurrency_never_exceeds_workers(cwd: Path) -> None:
    command = write_job(cwd)
    env = clean_env(JOB_OUT=str(cwd / "out.jsonl"))
    result = run_cli("--command", command, "--num-seeds", "8", "--workers", "3", "--run-dir", "r", cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = job_lines(cwd / "out.jsonl")
    assert sorted(x["seed"] for x in lines) == list(range(1, 9))
    assert max_overlap(lines) == 3
    jobs = records(cwd / "r")
    assert {j["state"] for j in jobs.values()} == {"COMPLETED"}
    assert all(j["exit_code"] == 0 and j["pid"] and j["end"] >= j["start"] for j in jobs.values())
    # Each try leaves its exit code behind, named by its scheduler id, whether the harness lives or not.
    assert sorted(p.name for p in (cwd / "r" / "exit").iterdir()) == sorted(j["scheduler_id"] for j in jobs.values())
    # Each job's output lands in its own log; the environment names the run for W&B.
    assert (cwd / "r" / jobs["job/4"]["log"]).read_text().strip() == "job ran with seed 4"
    env4 = next(x["env"] for x in lines if x["seed"] == 4)
    assert env4["BENCHMARK_SEED"] == "4" and env4["BENCHMARK_VARIANT"] == env4["WANDB_RUN_GROUP"] == "job"
    assert env4["WANDB_RUN_ID"] == jobs["job/4"]["wandb_id"] and env4["WANDB_NAME"] == jobs["job/4"]["wandb_name"]


def test_each_running_job_has_its_own_gpu(cwd: Path) -> None:
    command = write_job(cwd)
    # Seed 1 holds its GPU while the others come and go: a pool handing GPUs out in turn, rather than
    # the free ones, gives seed 1's GPU to a second job.
    env = clean_env(JOB_OUT=str(cwd / "out.jsonl"), CUDA_VISIBLE_DEVICES="7", JOB_SLEEP_SEED1="1.5")
    result = run_cli(
        "--command", command, "--num-seeds", "7", "--workers", "8", "--gpus", "0,1,2", "--run-dir", "r",
        cwd=cwd, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "running 3 at a time" in result.stdout
    lines = job_lines(cwd / "out.jsonl")
    assert {x["gpus"] for x in lines} == {"0", "1", "2"}
    long = next(x for x in lines if x["seed"] == 1)
    assert sum(x["start"] < long["end"] and long["start"] < x["end"] for x in lines) >= 4  # itself and 3 more
    for a in lines:
        for b in lines:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["gpus"] != b["gpus"], (a, b)
    assert {j["gpus"] for j in records(cwd / "r").values()} == {"0", "1", "2"}


def test_jobs_per_gpu_and_gpus_per_job(cwd: Path) -> None:
    command = write_job(cwd)
    env = clean_env(JOB_OUT=str(cwd / "out.jsonl"))
    result = run_cli(
        "--command", command, "--num-seeds", "4", "--workers", "4", "--gpus", "0,1", "--jobs-per-gpu", "2",
        "--gpus-per-job", "2", "--run-dir", "r", cwd=cwd, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = job_lines(cwd / "out.jsonl")
    assert {x["gpus"] for x in lines} <= {"0,1", "1,0"}
    assert max_overlap(lines) == 2


def test_gpu_default_comes_from_cuda_visible_devices(cwd: Path) -> None:
    result = run_cli(
        "--command", "true", "--workers", "2", "--dry-run", cwd=cwd, env=clean_env(CUDA_VISIBLE_DEVICES="4,5")
    )
    assert "GPUs: 4,5" in result.stdout and "[gpu 4]" in result.stdout


def test_more_gpus_per_job_than_exist_is_an_error_before_anything_starts(cwd: Path) -> None:
    result = run_cli("--command", "touch ran", "--workers", "1", "--gpus", "0,1", "--gpus-per-job", "3", cwd=cwd)
    assert result.returncode == 2
    assert "asks for 3 GPUs but only 2 exist" in result.stderr
    assert not (cwd / "ran").exists() and not (cwd / "runs").exists()


def test_failing_job_is_reported_with_its_log_tail(cwd: Path) -> None:
    result = run_cli(
        "--command", "ok=true", "--command", "bad=sh -c 'echo something broke >&2; exit 3'",
        "--num-seeds", "2", "--workers", "2", "--run-dir", "r", cwd=cwd,
    )
    assert result.returncode == 1
    assert "2/4 jobs completed" in result.stdout
    assert "bad/1 FAILED (exit 3)" in result.stdout and "something broke" in result.stdout
    jobs = records(cwd / "r")
    assert jobs["bad/2"]["state"] == "FAILED" and jobs["bad/2"]["exit_code"] == 3
    assert jobs["ok/1"]["state"] == "COMPLETED"
    status = run_cli("status", "r", cwd=cwd)
    assert status.returncode == 0
    row = next(line for line in status.stdout.splitlines() if "bad " in line and " 2 " in line and "logs" in line)
    assert "FAILED" in row and " 3 " in row and "r/logs/bad/seed-2.log" in row


def test_retries_are_each_recorded(cwd: Path) -> None:
    # Fails on its first try and succeeds on the second, per seed ($2 is the seed).
    flaky = "sh -c 'test -e tried-$2 || { touch tried-$2; echo first try; exit 4; }; echo second try' job"
    result = run_cli(
        "--command", f"flaky={flaky}", "--command", "never=sh -c 'exit 5'",
        "--num-seeds", "2", "--workers", "2", "--max-retries", "2", "--run-dir", "r", cwd=cwd,
    )
    assert result.returncode == 1
    jobs = records(cwd / "r")
    for seed in (1, 2):
        flaky_job = jobs[f"flaky/{seed}"]
        assert flaky_job["state"] == "COMPLETED" and flaky_job["log"] == f"logs/flaky/seed-{seed}.try2.log"
        assert [(t["state"], t["exit_code"]) for t in flaky_job["tries"]] == [("FAILED", 4)]
        assert (cwd / "r" / flaky_job["tries"][0]["log"]).read_text().strip() == "first try"
        assert (cwd / "r" / flaky_job["log"]).read_text().strip() == "second try"
        never = jobs[f"never/{seed}"]
        assert never["state"] == "FAILED" and len(never["tries"]) == 2
        assert never["log"] == f"logs/never/seed-{seed}.try3.log"


def test_live_view_on_a_terminal(cwd: Path) -> None:
    # On a terminal the harness draws rich's live view; elsewhere it prints one plain line per event.
    terminal, harness_side = pty.openpty()
    harness = subprocess.Popen(
        cli_argv("--command", "nap=sleep 1", "--seed-flag", "", "--command", "oops=false", "--num-seeds", "2",
                 "--workers", "2", "--run-dir", "r"),
        cwd=cwd, env=clean_env(), stdin=subprocess.DEVNULL, stdout=harness_side, stderr=harness_side,
    )
    os.close(harness_side)
    screen = b""
    with contextlib.suppress(OSError):  # EIO once the harness has exited and closed the terminal
        while chunk := os.read(terminal, 65536):
            screen += chunk
    os.close(terminal)
    assert harness.wait(timeout=60) == 1
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # drawn with colours and cursor moves, not plain lines
    assert "done 2" in text and "failed 2" in text and "4/4" in text and "elapsed" in text
    assert "nap/1  0:00" in text  # the running jobs, one row each
    assert "started" not in text  # routine events stay in the view; failures are printed above it
    assert "oops/1 failed (exit 1)" in text and "oops/2 failed (exit 1)" in text
    assert "2/4 jobs completed" in text
