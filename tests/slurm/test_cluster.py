"""Real submissions of rendered templates to the lab cluster (scripts/slurm-up.sh)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from cli import wait_for_logged

from benchmark.manifest import exit_file
from benchmark.templates import DEFAULT_TEMPLATE, render

pytestmark = pytest.mark.slurm

HERE = Path(__file__).parent
# Each rank says where it ran and which GPUs it saw; `--seed N` lands in $0/$1 and is ignored.
RANK_REPORT = "bash -c 'echo \"rank $SLURM_PROCID node $SLURMD_NODENAME gpus $CUDA_VISIBLE_DEVICES\"'"


def write_script(run_dir: Path, **values: object) -> Path:
    script = run_dir / "job.slurm"
    script.write_text(render(DEFAULT_TEMPLATE, run_dir=run_dir, **values))  # type: ignore[arg-type]
    return script


def log_path(run_dir: Path, job_id: str, index: int) -> Path:
    return run_dir / "logs" / f"trl_{job_id}_{index}.out"


def log_of(run_dir: Path, job_id: str, index: int) -> str:
    return log_path(run_dir, job_id, index).read_text()


def ranks(log: str) -> dict[str, tuple[str, str]]:
    """rank -> (node, CUDA_VISIBLE_DEVICES), from RANK_REPORT's lines."""
    found = {}
    for line in log.splitlines():
        if line.startswith("rank "):
            _, rank, _, node, _, gpus = line.split()
            found[rank] = (node, gpus)
    return found


def test_five_seed_array_completes_and_each_log_names_its_seed(lab, run_dir):
    seeds = [11, 12, 13, 14, 15]
    job = lab.submit(write_script(run_dir, command="echo command got", seeds=seeds, workers=2))
    tasks = lab.wait(job, len(seeds))
    for index, seed in enumerate(seeds):
        assert (tasks[index].state, tasks[index].exit_code) == ("COMPLETED", "0:0")
        log = log_of(run_dir, job, index)
        assert f"Running task {index} with seed: {seed}" in log
        assert f"command got --seed {seed}" in log
        assert exit_file(run_dir, f"{job}_{index}").read_text() == "0\n"


def test_failing_seed_shows_failed_with_its_exit_code(lab, run_dir):
    command = "bash -c 'exit $(( $2 == 2 ? 3 : 0 ))' task"  # $1 is --seed, $2 the seed
    job = lab.submit(write_script(run_dir, command=command, seeds=[1, 2, 3]))
    tasks = lab.wait(job, 3)
    assert [(t.state, t.exit_code) for t in tasks.values()] == [
        ("COMPLETED", "0:0"),
        ("FAILED", "3:0"),
        ("COMPLETED", "0:0"),
    ]
    assert [exit_file(run_dir, f"{job}_{index}").read_text() for index in range(3)] == ["0\n", "3\n", "0\n"]


def test_two_ranks_get_distinct_gpus(lab, run_dir):
    script = write_script(run_dir, command=RANK_REPORT, seeds=[1], ntasks=2, gpus_per_task=1, nodes=1)
    job = lab.submit(script)
    assert lab.wait(job, 1)[0].state == "COMPLETED"
    found = ranks(log_of(run_dir, job, 0))
    assert set(found) == {"0", "1"}
    assert found["0"][0] == found["1"][0]  # one node, so the GPUs must differ
    assert found["0"][1] != found["1"][1]


def test_two_nodes_spread_ranks_over_both(lab, run_dir):
    script = write_script(run_dir, command=RANK_REPORT, seeds=[1], ntasks=2, gpus_per_task=1, nodes=2)
    job = lab.submit(script)
    task = lab.wait(job, 1)[0]
    assert task.state == "COMPLETED"
    assert task.nodes == "node[1-2]"
    assert {node for node, _ in ranks(log_of(run_dir, job, 0)).values()} == {"node1", "node2"}


def test_bogus_partition_is_refused_by_sbatch(lab, run_dir):
    result = lab.sbatch(write_script(run_dir, command="true", seeds=[1], partition="no-such-partition"))
    assert result.returncode != 0
    assert "invalid partition specified: no-such-partition" in result.stderr


def test_controller_restart_keeps_running_jobs(lab, run_dir):
    job = lab.submit(write_script(run_dir, command="echo started; sleep 15; echo", seeds=[1, 2]))
    # Each task's own output, not squeue's RUNNING, says its script runs: squeue reads RUNNING from the
    # allocation on, and a controller stopped between allocation and launch (25 ms apart in a CI run) left
    # both tasks RUNNING for good, their scripts never run.
    logs = [log_path(run_dir, job, index) for index in (0, 1)]
    wait_for_logged(logs, "started", what="both scripts to run")
    subprocess.run(["bash", lab.scripts / "slurm-down.sh", "slurmctld"], check=True, timeout=60)
    try:
        assert subprocess.run(["scontrol", "ping"], capture_output=True, timeout=60).returncode != 0
    finally:
        subprocess.run(["bash", lab.scripts / "slurm-up.sh"], check=True, capture_output=True, timeout=180)
    assert [t.state for t in lab.wait(job, 2).values()] == ["COMPLETED", "COMPLETED"]


def test_slurm_up_on_a_running_cluster_changes_nothing(lab):
    def daemons() -> list[str]:
        return sorted(path.read_text() for path in (lab.path / "run").glob("*.pid"))

    before, start = daemons(), time.monotonic()
    subprocess.run(["bash", lab.scripts / "slurm-up.sh"], check=True, capture_output=True, timeout=60)
    assert time.monotonic() - start < 5
    assert daemons() == before
