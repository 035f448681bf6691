"""The Slurm backend through the real CLI, on the lab cluster of scripts/slurm-up.sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli import REPO, clean_env, cli_argv, followup, records, run_cli, wait_for, wait_for_logged

pytestmark = pytest.mark.slurm
TEMPLATE = str(REPO / "templates" / "trl.slurm_template")
# --workers 0 would write the scripts and submit nothing, as in TRL.
SLURM = ("--workers", "10", "--slurm-template-path", TEMPLATE, "--slurm-total-cpus", "1", "--poll-interval", "0.3",
         "--run-dir", "r")


def sweep(cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return run_cli(*SLURM, *args, cwd=cwd, timeout=timeout)  # a test's own --workers comes last and wins


def sacct_states(array: str) -> list[str]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", array], capture_output=True,
                         text=True, timeout=60).stdout
    return [state.split()[0] for job, state in (line.split("|") for line in out.splitlines()) if "_" in job
            and "[" not in job]


def status_rows(cwd: Path, *args: str) -> str:
    result = run_cli("status", "r", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    return tmp_path


def test_five_seed_array_completes_and_each_log_names_its_seed(cwd: Path) -> None:
    marker = "sh -c 'date +%s.%N > ended-$2; echo my seed is $2, my wandb run $WANDB_RUN_ID' task"
    result = sweep(cwd, "--command", f"five={marker}", "--num-seeds", "5", "--workers", "2", "--wait",
                   "--then", "date +%s.%N > then-ran")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("submitted job array") == 1
    jobs = records(cwd / "r")
    array_ids = {j["scheduler_id"].split("_")[0] for j in jobs.values() if j["variant"] == "five"}
    assert len(array_ids) == 1
    for seed in range(1, 6):
        job = jobs[f"five/{seed}"]
        assert job["state"] == "COMPLETED" and job["exit_code"] == 0 and job["node"] in ("node1", "node2")
        # The manifest knows each task's W&B run id, so a report can find its run.
        assert f"my seed is {seed}, my wandb run {job['wandb_id']}" in (cwd / "r" / job["log"]).read_text()
    # The follow-up ran after every task had ended, not just the first.
    assert followup(cwd / "r")["state"] == "COMPLETED"
    then_ran = float((cwd / "then-ran").read_text())
    assert all(then_ran >= float((cwd / f"ended-{seed}").read_text()) for seed in range(1, 6))
    script = next((cwd / "r" / "scripts").glob("five-*.sh")).read_text()
    assert "#SBATCH --array=0-4%2" in script and "seeds=(1 2 3 4 5)" in script


def ranks_placed(cwd: Path, nodes: int) -> dict[str, tuple[str, str]]:
    """One job of 2 ranks with a GPU each over `nodes` nodes: each rank's (node, gpu) as it reported them."""
    report = "sh -c 'echo rank=$SLURM_PROCID node=$SLURMD_NODENAME gpu=$CUDA_VISIBLE_DEVICES' x"
    result = sweep(cwd, "--command", f"ranks={report}", "--num-seeds", "1", "--slurm-ntasks", "2",
                   "--slurm-gpus-per-task", "1", "--slurm-nodes", str(nodes), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    log = (cwd / "r" / records(cwd / "r")["ranks/1"]["log"]).read_text()
    ranks = {rank: tuple(where.split()) for rank, where in
             (line.split(" ", 1) for line in log.splitlines() if line.startswith("rank="))}
    assert set(ranks) == {"rank=0", "rank=1"}, log
    return ranks


def test_ranks_get_distinct_gpus_and_jobs_spread_over_nodes(cwd: Path) -> None:
    spread = ranks_placed(cwd, nodes=2)
    assert {node for node, _ in spread.values()} == {"node=node1", "node=node2"}, spread
    assert all(gpu in ("gpu=0", "gpu=1") for _, gpu in spread.values()), spread
    # Two ranks on one node: each its own GPU of that node's two.
    packed = cwd / "packed"
    packed.mkdir()
    together = ranks_placed(packed, nodes=1)
    assert len({node for node, _ in together.values()}) == 1, together
    assert sorted(gpu for _, gpu in together.values()) == ["gpu=0", "gpu=1"], together


def test_a_failing_seed_is_recorded_and_resume_resubmits_only_it(cwd: Path) -> None:
    flaky = "sh -c 'test $2 != 2 || test -e fixed || exit 7; echo ok $2' x"
    result = sweep(cwd, "--command", f"flaky={flaky}", "--num-seeds", "3", "--wait")
    assert result.returncode == 1
    assert "flaky/2 FAILED (exit 7)" in result.stdout
    before = records(cwd / "r")
    assert [before[f"flaky/{s}"]["state"] for s in (1, 2, 3)] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert before["flaky/2"]["exit_code"] == 7
    row = next(line for line in status_rows(cwd).splitlines() if "flaky " in line and " 2 " in line and "logs" in line)
    assert "FAILED" in row and " 7 " in row

    (cwd / "fixed").touch()
    result = run_cli("resume", "r", cwd=cwd, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming 1 of 3 jobs" in result.stdout
    after = records(cwd / "r")
    assert {j["state"] for j in after.values()} == {"COMPLETED"}
    assert after["flaky/1"]["scheduler_id"] == before["flaky/1"]["scheduler_id"]
    assert after["flaky/2"]["scheduler_id"] != before["flaky/2"]["scheduler_id"]
    assert after["flaky/2"]["tries"][0]["exit_code"] == 7
    assert "ok 2" in (cwd / "r" / after["flaky/2"]["log"]).read_text()


def test_cancel_stops_exactly_this_runs_jobs(cwd: Path) -> None:
    other = run_cli("--command", "other=sleep 60", "--num-seeds", "1", "--seed-flag", "", *SLURM[:-1], "other-run",
                    cwd=cwd)
    assert other.returncode == 0, other.stderr
    result = sweep(cwd, "--command", "sleepy=sleep 60", "--num-seeds", "3", "--seed-flag", "")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: "RUNNING" in states(cwd), what="a task to run")
    cancelled = run_cli("cancel", "r", cwd=cwd)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled 3 task(s)" in cancelled.stdout
    assert [j["state"] for j in records(cwd / "r").values()] == ["CANCELLED"] * 3
    array = records(cwd / "r")["sleepy/1"]["scheduler_id"].split("_")[0]
    wait_for(lambda: sacct_states(array) == ["CANCELLED"] * 3, what="Slurm to cancel all three tasks")
    other_id = records(cwd / "other-run")["other/1"]["scheduler_id"].split("_")[0]
    squeue = subprocess.run(["squeue", "-h", "-j", other_id, "-o", "%T"], capture_output=True, text=True).stdout
    assert squeue.strip() in ("PENDING", "RUNNING"), "another run's job was cancelled too"
    assert run_cli("cancel", "other-run", cwd=cwd).returncode == 0


def test_unknown_template_variable_is_an_error_before_submission(cwd: Path) -> None:
    template = cwd / "bad.slurm_template"
    template.write_text("#!/bin/bash\n#SBATCH --array={{array}}\n\nsrun {{command}} --seed {{ sed }}\n")
    result = run_cli("--command", "true", "--slurm-template-path", str(template), "--run-dir", "r", cwd=cwd)
    assert result.returncode == 2
    assert f"{template}:4: undefined template variable 'sed'" in result.stderr
    assert not (cwd / "r").exists()


def test_sbatch_refusing_one_variant_leaves_the_others_submitted(cwd: Path) -> None:
    template = cwd / "picky.slurm_template"
    original = Path(TEMPLATE).read_text()
    # The variant named "bad" asks for a partition that does not exist; sbatch refuses it alone.
    template.write_text(original.replace(
        "#SBATCH --export=ALL", "#SBATCH --export=ALL\n{% if job_name == 'bad' %}#SBATCH --partition=nope{% endif %}"
    ))
    result = run_cli("--command", "good=true", "--command", "bad=true", "--num-seeds", "2", "--workers", "2",
                     "--slurm-template-path", str(template), "--slurm-total-cpus", "1", "--wait",
                     "--poll-interval", "0.3", "--run-dir", "r", cwd=cwd, timeout=120)
    assert result.returncode == 1
    assert "not submitted: bad: sbatch failed" in result.stderr and "invalid partition" in result.stderr.lower()
    jobs = records(cwd / "r")
    assert jobs["bad/1"]["state"] == "NOT_SUBMITTED" and "invalid partition" in jobs["bad/1"]["message"].lower()
    assert jobs["good/1"]["state"] == jobs["good/2"]["state"] == "COMPLETED"


def test_controller_down_mid_sweep_loses_no_task(cwd: Path) -> None:
    # Long enough to be seen running: sacct learns of a start through slurmdbd, seconds late under load
    # (a 4 s task once went from PENDING to COMPLETED between two looks).
    result = sweep(cwd, "--command", "slow=echo started; sleep 15", "--num-seeds", "2", "--seed-flag", "")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: states(cwd) == ["RUNNING", "RUNNING"], what="both tasks to run")
    # Their scripts too: Slurm says RUNNING from the allocation on, and a controller stopped before the
    # launch (in CI once, 25 ms after the allocation) leaves the tasks RUNNING for good, never run.
    logs = [cwd / "r" / job["log"] for job in records(cwd / "r").values()]
    wait_for_logged(logs, "started", what="both scripts to run")
    subprocess.run(["bash", str(REPO / "scripts" / "slurm-down.sh"), "slurmctld"], check=True, timeout=60)
    try:
        down = run_cli("status", "r", cwd=cwd)
        assert down.returncode == 0 and "Traceback" not in down.stderr
        assert "controller is unreachable" in down.stdout
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "slurm-up.sh")], check=True, timeout=180,
                       capture_output=True)
    wait_for(lambda: states(cwd) == ["COMPLETED", "COMPLETED"], timeout=90, what="both tasks to complete")
    assert "unreachable" not in status_rows(cwd)


def test_harness_killed_after_submission_keeps_the_job_ids(cwd: Path) -> None:
    harness = subprocess.Popen(
        cli_argv("--command", "slow=sleep 3", "--num-seeds", "2", "--seed-flag", "", "--wait", *SLURM),
        cwd=cwd, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    manifest = cwd / "r" / "manifest.jsonl"
    wait_for(lambda: manifest.exists() and all(j["scheduler_id"] for j in records(cwd / "r").values()),
             what="the job ids in the manifest")
    harness.kill()
    harness.wait()
    ids = {j["scheduler_id"] for j in records(cwd / "r").values()}
    assert "slow" in status_rows(cwd)
    result = run_cli("resume", "r", cwd=cwd)
    assert result.returncode == 0 and ("nothing to resume" in result.stdout or "left alone" in result.stdout)
    assert {j["scheduler_id"] for j in records(cwd / "r").values()} == ids  # nothing resubmitted
    wait_for(lambda: states(cwd) == ["COMPLETED", "COMPLETED"], what="the tasks to complete")


def test_node_down_under_a_running_task_is_recorded_and_resumed(cwd: Path) -> None:
    result = sweep(cwd, "--command", "victim=sleep 30", "--num-seeds", "1", "--seed-flag", "",
                   "--slurm-extra=--no-requeue")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: records_now(cwd)["victim/1"].get("node"), what="the task to run on a node")
    node = records_now(cwd)["victim/1"]["node"]
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=test"], check=True)
    try:
        wait_for(lambda: states(cwd) in (["NODE_FAIL"], ["FAILED"]), what="the task to end with its node")
    finally:
        # With ReturnToService=2 the node may be back already, and then Slurm refuses "resume".
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
    first_id = records(cwd / "r")["victim/1"]["scheduler_id"]
    resumed = run_cli("resume", "r", "--workers", "1", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming 1 of 1 jobs" in resumed.stdout
    # The lost try is on record, and the job runs again under a new Slurm id.
    record = records(cwd / "r")["victim/1"]
    assert [t["state"] for t in record["tries"]] in (["NODE_FAIL"], ["FAILED"])
    assert record["tries"][0]["scheduler_id"] == first_id and record["scheduler_id"] not in (None, first_id)
    wait_for(lambda: states(cwd) == ["RUNNING"], what="the resubmitted task to run")
    assert run_cli("cancel", "r", cwd=cwd).returncode == 0


def records_now(cwd: Path) -> dict[str, dict]:
    """The records after `status` has asked Slurm (status does not write; resume does)."""
    from benchmark.backends import get_scheduler
    from benchmark.engine import current
    from benchmark.manifest import Manifest

    manifest = Manifest.load(cwd / "r")
    current(manifest, get_scheduler(manifest.plan, manifest.run_dir))
    return {i: vars(r) for i, r in manifest.jobs.items()}


def states(cwd: Path) -> list[str]:
    return sorted(r["state"] for r in records_now(cwd).values())


def test_trl_template_runs_unchanged(cwd: Path) -> None:
    """TRL's own benchmark/trl.slurm_template, as TRL ships it: --partition=hopper-prod, `module load
    cuda/12.1` (no module system here; the template has no `set -e`), --output=slurm/logs/%x_%j.out in a
    folder nobody made, and `{{nodes}}` after the first command. Only the partition comes by flag."""
    template = Path(__file__).parent / "trl_original.slurm_template"
    result = run_cli("--command", "echo trl", "--num-seeds", "2", "--workers", "2", "--slurm-nodes", "1",
                     "--slurm-gpus-per-task", "1", "--slurm-ntasks", "1", "--slurm-total-cpus", "2",
                     "--slurm-template-path", str(template), "--slurm-partition", "debug", "--poll-interval", "0.3",
                     "--run-dir", "r", "--wait", cwd=cwd, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    # sbatch would ignore the --nodes line in silence; the harness names it.
    assert f"warning: {template}:13: sbatch ignores '#SBATCH --nodes=1'" in result.stderr
    jobs = records(cwd / "r")
    for seed in (1, 2):
        job = jobs[f"echo-trl/{seed}"]
        # %x is the template's job name, %j each task's own job id (read back from Slurm).
        log = Path(job["log"])
        assert job["state"] == "COMPLETED" and log.parent == cwd / "slurm" / "logs", job
        assert log.name.startswith("trl_") and "%" not in log.name
        assert f"trl --seed {seed}" in log.read_text()
    status = status_rows(cwd, "--all")
    assert all(str(Path(job["log"])) in status.replace("\n", "") for job in jobs.values()), status


def test_a_log_slurm_cannot_write_is_named(cwd: Path) -> None:
    template = cwd / "unwritable.slurm_template"
    template.write_text((Path(__file__).parent / "trl_original.slurm_template").read_text().replace(
        "slurm/logs/%x_%j.out", "/proc/no-such-folder/%x_%j.out"))
    result = run_cli("--command", "echo trl", "--num-seeds", "1", "--workers", "1", "--slurm-gpus-per-task", "1",
                     "--slurm-ntasks", "1", "--slurm-total-cpus", "2", "--slurm-template-path", str(template),
                     "--slurm-partition", "debug",
                     "--poll-interval", "0.3", "--run-dir", "r", "--wait", cwd=cwd, timeout=180)
    assert result.returncode == 1
    assert "cannot make the folder of its log /proc/no-such-folder/%x_%j.out" in result.stderr
    (job,) = records(cwd / "r").values()
    assert job["state"] == "FAILED" and job["log"].startswith("/proc/no-such-folder/trl_") and "%" not in job["log"]
    assert f"(no log: Slurm could not open {job['log']} for the task" in result.stdout.replace("\n", "")


def test_the_users_wandb_tags_are_kept(cwd: Path) -> None:
    result = run_cli("--command", "tags=sh -c 'echo tags=$WANDB_TAGS'", "--num-seeds", "1", "--seed-flag", "",
                     "--pr", "7", "--wait", *SLURM, cwd=cwd, env=clean_env(WANDB_TAGS="mine"), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    log = (cwd / "r" / records(cwd / "r")["tags/1"]["log"]).read_text()
    assert "tags=mine," in log and ",pr-7" in log, log


def test_a_variant_named_then_is_submitted(cwd: Path) -> None:
    result = sweep(cwd, "--command", "then=sh -c 'echo seed $2' x", "--num-seeds", "2", "--then", "echo after",
                   "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = records(cwd / "r")
    assert [jobs[f"then/{seed}"]["state"] for seed in (1, 2)] == ["COMPLETED", "COMPLETED"]
    assert (followup(cwd / "r") or {}).get("state") == "COMPLETED"


def test_a_task_that_fails_once_completes_on_its_second_try(cwd: Path) -> None:
    once = "sh -c 'test -e failed-$2 || { touch failed-$2; exit 3; }; echo ok $2' x"
    result = sweep(cwd, "--command", f"once={once}", "--num-seeds", "2", "--max-retries", "1", "--wait",
                   "--then", "echo after")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = records(cwd / "r")
    for seed in (1, 2):
        job = jobs[f"once/{seed}"]
        assert job["state"] == "COMPLETED" and [(t["state"], t["exit_code"]) for t in job["tries"]] == [("FAILED", 3)]
        assert f"ok {seed}" in (cwd / "r" / job["log"]).read_text()
    # The retries went in as a new array of just those seeds; the follow-up ran after them.
    assert jobs["once/1"]["scheduler_id"].split("_")[0] != jobs["once/1"]["tries"][0]["scheduler_id"].split("_")[0]
    then = followup(cwd / "r") or {}
    assert then.get("state") == "COMPLETED" and then["end"] >= max(j["end"] for j in jobs.values())


def test_a_cancelled_task_is_not_retried_and_status_says_why(cwd: Path) -> None:
    harness = subprocess.Popen(cli_argv("--command", "sleepy=sleep 60", "--num-seeds", "1", "--seed-flag", "",
                                        "--max-retries", "2", "--wait", *SLURM),
                               cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (cwd / "r" / "manifest.jsonl").exists() and records(cwd / "r")["sleepy/1"]["scheduler_id"],
             what="the task's job id")
    subprocess.run(["scancel", records(cwd / "r")["sleepy/1"]["scheduler_id"]], check=True, timeout=60)
    output, _ = harness.communicate(timeout=120)
    assert harness.returncode == 1, output
    job = records(cwd / "r")["sleepy/1"]
    assert job["state"] == "CANCELLED" and job["tries"] == []
    assert "sleepy/1: not retried: it was cancelled" in status_rows(cwd)


def test_a_task_whose_node_fails_is_retried_on_another_node(cwd: Path) -> None:
    harness = subprocess.Popen(cli_argv("--command", "victim=sleep 20", "--num-seeds", "1", "--seed-flag", "",
                                        "--slurm-extra=--no-requeue", "--max-retries", "1", "--wait", *SLURM),
                               cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (cwd / "r" / "manifest.jsonl").exists() and records_now(cwd)["victim/1"].get("node"),
             what="the task to run on a node")
    node = records_now(cwd)["victim/1"]["node"]
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=test"], check=True)
    try:
        wait_for(lambda: records(cwd / "r")["victim/1"]["tries"], timeout=90, what="the harness to submit try 2")
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
    output, _ = harness.communicate(timeout=120)
    assert harness.returncode == 0, output
    job = records(cwd / "r")["victim/1"]
    assert job["state"] == "COMPLETED" and job["tries"][0]["state"] in ("NODE_FAIL", "FAILED")
    if job["tries"][0]["state"] == "NODE_FAIL":  # then it went in with --exclude of the failed node
        assert job["node"] != node, (job, node)


def test_a_task_that_can_never_start_is_named_with_slurms_reason(cwd: Path) -> None:
    # TRL's default of 50 CPUs for one GPU, on nodes of 8 CPUs: Slurm queues it and never starts it.
    result = run_cli("--command", "greedy=true", "--num-seeds", "1", "--workers", "1", "--slurm-template-path",
                     TEMPLATE, "--run-dir", "r", cwd=cwd)
    assert result.returncode == 0, result.stderr
    try:
        wait_for(lambda: "pending for good: Slurm says BadConstraints" in status_rows(cwd), timeout=60,
                 what="status to name the reason")
    finally:
        assert run_cli("cancel", "r", cwd=cwd).returncode == 0
