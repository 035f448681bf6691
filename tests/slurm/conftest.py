"""Slurm tests submit to the lab cluster of scripts/slurm-up.sh.

Tests marked `slurm` skip, with the reason, where that cluster is not reachable; under CI=true they
fail instead, since CI starts the cluster and a silent skip would hide a broken one.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB_CLUSTER = "trlbench"
# Every Slurm command of these tests, and of the jobs and harnesses they start, reads the lab's config
# (scripts/slurm-lib.sh): never a real cluster's /etc/slurm/slurm.conf, as on a login node.
LAB_DIR = Path(os.environ.get("SLURM_LAB_DIR", "/var/tmp/trl-benchmark-slurm"))
os.environ["SLURM_CONF"] = str(LAB_DIR / "etc" / "slurm.conf")
# sacct states of tasks that have not ended yet; any other state is final.
UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED"}


@functools.cache
def cluster_problem() -> str | None:
    """Why the lab cluster cannot be used, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (start the lab cluster: sudo bash scripts/slurm-up.sh)"
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "the Slurm controller did not answer `scontrol show config` within 60 s"
    if config.returncode != 0:
        return f"the Slurm controller is unreachable: {config.stderr.strip()}"
    names = [line.split("=", 1)[1].strip() for line in config.stdout.splitlines() if line.startswith("ClusterName")]
    if names != [LAB_CLUSTER]:
        # These tests expect the lab's nodes, fake GPUs and partition; a real cluster is not theirs.
        return f"sbatch reaches cluster {names}, not the lab cluster {LAB_CLUSTER!r} of scripts/slurm-up.sh"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slurm") is None or (problem := cluster_problem()) is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires the Slurm cluster: {problem}", pytrace=False)
    pytest.skip(problem)


@dataclass
class Task:
    state: str
    exit_code: str  # sacct's "code:signal"
    nodes: str


class Lab:
    """Submit batch scripts to the lab cluster and read sacct (fixture `lab`)."""

    scripts = REPO / "scripts"
    path = LAB_DIR

    def sbatch(self, script: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sbatch", "--parsable", str(script)], cwd=cwd, capture_output=True, text=True, timeout=60
        )

    def submit(self, script: Path, cwd: Path | None = None) -> str:
        """Submit a batch script; its job id."""
        result = self.sbatch(script, cwd)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().split(";")[0]

    def wait(self, job_id: str, count: int, timeout: float = 90) -> dict[int, Task]:
        """sacct's record of each array task (by index) once all `count` of them have ended."""
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(
                ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode,NodeList"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            tasks: dict[int, Task] = {}
            for line in out.splitlines():
                job, state, exit_code, nodes = line.split("|")
                _, _, index = job.partition("_")
                if index.isdigit():  # pending ranges read "123_[2-4]"
                    tasks[int(index)] = Task(state.split()[0], exit_code, nodes)
            if len(tasks) == count and all(task.state not in UNFINISHED for task in tasks.values()):
                return tasks
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: not all {count} tasks ended within {timeout} s: {out}")
            time.sleep(0.3)


@pytest.fixture
def lab() -> Lab:
    return Lab()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    # The space checks the script's quoting. sbatch opens the log but does not create its directory.
    path = tmp_path / "run dir"
    (path / "logs").mkdir(parents=True)
    return path
