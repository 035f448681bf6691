"""The submitit backend through the real CLI, on the lab cluster of scripts/slurm-up.sh, and on
submitit's local executor, which needs no cluster."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cli import clean_env, cli_argv, followup, records, run_cli, wait_for

from benchmark.backends import get_scheduler
from benchmark.engine import current
from benchmark.manifest import Manifest

# Fails for seed 2 until the file `fixed` exists; says its seed either way.
FLAKY = "sh -c 'echo my seed is $2; test $2 != 2 || test -e fixed || exit 7' x"
# Runs for a minute, leaving its pid in pid-<seed>.
SLEEPY = "sh -c 'echo $$ > pid-$2; sleep 60' x"


def launch(cwd: Path, command: str, num_seeds: int, *options: str) -> int:
    """Run a sweep; the harness's exit code. Its output is not captured: local tasks inherit it and
    would keep a pipe open until they end."""
    argv = cli_argv("--backend", "submitit", "--command", f"v={command}", "--num-seeds", str(num_seeds),
                    "--slurm-gpus-per-task", "0", "--slurm-total-cpus", "1", "--poll-interval", "0.3",
                    "--run-dir", "r", *options)
    return subprocess.run(argv, cwd=cwd, env=clean_env(), stdout=subprocess.DEVNULL, timeout=120).returncode


def states(cwd: Path) -> list[str]:
    """The states `status` would show (status itself does not write them)."""
    manifest = Manifest.load(cwd / "r")
    current(manifest, get_scheduler(manifest.plan, manifest.run_dir))
    return [record.state for record in manifest.jobs.values()]


@pytest.mark.slurm
def test_a_three_seed_sweep_records_submitits_jobs_and_resumes_the_failed_seed(tmp_path: Path) -> None:
    assert launch(tmp_path, FLAKY, 3, "--wait") == 1
    jobs = records(tmp_path / "r")
    array = jobs["v/1"]["scheduler_id"].split("_")[0]
    assert [jobs[f"v/{seed}"]["scheduler_id"] for seed in (1, 2, 3)] == [f"{array}_{i}" for i in range(3)]
    assert [jobs[f"v/{seed}"]["state"] for seed in (1, 2, 3)] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert jobs["v/2"]["exit_code"] == 7  # the command's own code, not submitit's 1
    for seed in (1, 2, 3):
        assert jobs[f"v/{seed}"]["log"] == f"submitit/{array}_{seed - 1}_0_log.out"
        assert f"my seed is {seed}" in (tmp_path / "r" / jobs[f"v/{seed}"]["log"]).read_text()

    status = run_cli("status", "r", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "2 COMPLETED, 1 FAILED" in status.stdout and f"{array}_1" in status.stdout

    (tmp_path / "fixed").touch()
    resumed = run_cli("resume", "r", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming 1 of 3 jobs" in resumed.stdout
    after = records(tmp_path / "r")
    assert {job["state"] for job in after.values()} == {"COMPLETED"}
    assert after["v/1"]["scheduler_id"] == jobs["v/1"]["scheduler_id"]
    assert after["v/2"]["scheduler_id"] != jobs["v/2"]["scheduler_id"]


@pytest.mark.slurm
def test_then_runs_after_every_task_through_submitit(tmp_path: Path) -> None:
    ended = "sh -c 'sleep 1; date +%s.%N > ended-$2' x"
    assert launch(tmp_path, ended, 3, "--wait", "--then", "date +%s.%N > then-ran") == 0
    then = followup(tmp_path / "r")
    assert then and then["state"] == "COMPLETED" and "_" not in then["scheduler_id"]
    then_ran = float((tmp_path / "then-ran").read_text())
    assert all(then_ran >= float((tmp_path / f"ended-{seed}").read_text()) for seed in (1, 2, 3))


def test_then_is_refused_on_the_local_executor(tmp_path: Path) -> None:
    assert launch(tmp_path, "true", 1, "--submitit-cluster", "local", "--then", "true") == 2
    assert not (tmp_path / "r").exists()


@pytest.mark.slurm
def test_cancel_stops_the_sweeps_tasks(tmp_path: Path) -> None:
    assert launch(tmp_path, SLEEPY, 2) == 0
    wait_for(lambda: "RUNNING" in states(tmp_path), what="a task to run")
    cancelled = run_cli("cancel", "r", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert [job["state"] for job in records(tmp_path / "r").values()] == ["CANCELLED"] * 2
    array = records(tmp_path / "r")["v/1"]["scheduler_id"].split("_")[0]
    squeue = subprocess.run(["squeue", "-h", "-j", array, "-o", "%T"], capture_output=True, text=True).stdout
    assert set(squeue.split()) <= {"COMPLETING"}, squeue  # nothing pending or running any more


@pytest.mark.slurm
def test_sbatch_refusing_leaves_the_tasks_not_submitted(tmp_path: Path) -> None:
    assert launch(tmp_path, "true", 2, "--slurm-partition", "nope") == 1
    jobs = records(tmp_path / "r")
    assert {job["state"] for job in jobs.values()} == {"NOT_SUBMITTED"}
    assert "invalid partition" in jobs["v/1"]["message"].lower()


def test_the_local_executor_runs_the_sweep_without_slurm(tmp_path: Path) -> None:
    assert launch(tmp_path, FLAKY, 2, "--submitit-cluster", "local", "--wait") == 1
    jobs = records(tmp_path / "r")
    assert [jobs["v/1"]["state"], jobs["v/2"]["state"]] == ["COMPLETED", "FAILED"]
    assert jobs["v/2"]["exit_code"] == 7 and jobs["v/2"]["scheduler_id"].isdigit()  # the controller's pid
    assert "my seed is 1" in (tmp_path / "r" / jobs["v/1"]["log"]).read_text()


def test_cancel_on_the_local_executor_stops_the_commands(tmp_path: Path) -> None:
    assert launch(tmp_path, SLEEPY, 2, "--submitit-cluster", "local") == 0
    wait_for(lambda: all((tmp_path / f"pid-{seed}").exists() for seed in (1, 2)), what="both commands to start")
    cancelled = run_cli("cancel", "r", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert [job["state"] for job in records(tmp_path / "r").values()] == ["CANCELLED"] * 2
    pids = [int((tmp_path / f"pid-{seed}").read_text()) for seed in (1, 2)]
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), timeout=10, what="the commands to end")


# Writes a real offline W&B run, as trl_ppo does, under whatever id and group the harness handed it.
WANDB_JOB = ("python -c \"import sys, wandb; run = wandb.init(mode='offline', config={'seed': int(sys.argv[2])}); "
             "run.log({'env/reward_mean': float(sys.argv[2])}); run.finish()\"")


def test_report_finds_the_runs_of_a_submitit_sweep(tmp_path: Path) -> None:
    assert launch(tmp_path, WANDB_JOB, 2, "--submitit-cluster", "local", "--wait") == 0
    jobs = records(tmp_path / "r")
    # The manifest knows each task's W&B run id, so the report needs no folder or project to find them.
    assert all(job["wandb_id"] for job in jobs.values())
    found = {path.stem.removeprefix("run-") for path in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")}
    assert found == {job["wandb_id"] for job in jobs.values()}
    report = run_cli("report", "--run-dir", "r", "--output-dir", "out", cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "| v | 2 / 2 | 1.5" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.slurm
def test_a_sweep_on_slurm_stays_a_slurm_sweep_where_srun_is_missing(tmp_path: Path) -> None:
    assert launch(tmp_path, "sleep 30", 1, "--seed-flag", "") == 0
    # A shell with the Slurm client commands but no srun, as on a node where only sacct is installed.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sacct", "squeue", "scontrol", "scancel", "sbatch"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    status = run_cli("status", "r", cwd=tmp_path, env=clean_env(PATH=str(bin_dir)))
    assert status.returncode == 0, status.stderr
    assert ("1 QUEUED" in status.stdout or "1 RUNNING" in status.stdout) and "LOST" not in status.stdout, status.stdout
    assert run_cli("cancel", "r", cwd=tmp_path).returncode == 0
