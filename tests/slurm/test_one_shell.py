"""One command, one meaning: the local pool, Slurm and submitit all run a job's command with bash."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import records, run_cli

pytestmark = pytest.mark.slurm

# Brace expansion and ${VAR:+word} read differently under dash (the /bin/sh of Debian and Ubuntu).
COMMAND = "echo brace={a,b} shell=${BASH_VERSION:+bash} escaped=\\$HOME"
EXPECTED = "brace=a brace=b shell=bash escaped=$HOME --seed 1"
BACKENDS = {
    "local": ("--workers", "1"),
    "slurm": ("--backend", "slurm", "--workers", "1", "--wait"),
    "submitit": ("--backend", "submitit", "--submitit-cluster", "slurm", "--wait"),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_command_means_the_same_on_every_backend(tmp_path: Path, backend: str) -> None:
    result = run_cli("--command", f"v={COMMAND}", "--num-seeds", "1", "--slurm-gpus-per-task", "0",
                     "--slurm-total-cpus", "1", "--poll-interval", "0.3", "--run-dir", "r", *BACKENDS[backend],
                     cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = records(tmp_path / "r").values()
    assert job["state"] == "COMPLETED"
    assert EXPECTED in (tmp_path / "r" / job["log"]).read_text().splitlines()
