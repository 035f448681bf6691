"""`pip install trl-benchmark` (the wheel of this checkout, no extras) into a fresh venv: the harness, the report and
compare work from there, away from any checkout, and never look for torch or the rest of the `ppo` extra."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import REPO, clean_env
from install.heavy import IMPORT_ALL, forget, looked_for, recording, write_job


@pytest.mark.slow
def test_the_base_install_runs_sweeps_reports_and_compares_without_torch(tmp_path: Path) -> None:
    started = time.monotonic()
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # From PyPI (pip's cache makes a second time quick); a cold cache downloads ~175 MB of wheels.
    install = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              str(wheel)], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout + install.stderr
    size = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True, check=True).stdout.split()[0]
    print(f"\nbase install: {size} MB (du -sm of the venv), built and installed in {time.monotonic() - started:.0f} s")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The fresh venv's `python` and `benchmark` on PATH, for the harness and the jobs it starts, instead of this
    # venv's; no W&B settings from outside; PYTHONPATH holds the recorder only.
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent]
    base = {k: v for k, v in clean_env().items() if not k.startswith(("WANDB_", "VIRTUAL_ENV"))}
    base.update(PATH=os.pathsep.join([str(venv / "bin"), *path]), WANDB_MODE="offline", WANDB_SILENT="true")
    env = recording(tmp_path / "recorder", base)

    def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout)

    no_torch = run("python", "-c", "import torch")
    assert "No module named 'torch'" in no_torch.stderr
    assert [look["name"] for look in looked_for(env)] == ["torch"]  # the recorder records
    forget(env)
    where = run("python", "-c", "import benchmark; print(benchmark.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr
    # Every module imports with the base install's packages; the TensorBoard reader needs tensorboard.
    imported = run("python", "-c", IMPORT_ALL, "benchmark.report.tensorboard")
    assert imported.returncode == 0, imported.stderr

    helped = run("benchmark", "--help")
    assert helped.returncode == 0 and "usage: benchmark" in helped.stdout, helped.stdout + helped.stderr
    job = f"python {write_job(elsewhere)}"
    sweep = run("benchmark", "--command", f"a={job}", "--command", f"b={job} --offset 1", "--num-seeds", "2",
                "--workers", "4", "--run-dir", "r", timeout=300)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    status = run("benchmark", "status", "r")
    assert status.returncode == 0 and status.stdout.startswith("r: 4 COMPLETED"), status.stdout + status.stderr
    report = run("benchmark", "report", "--run-dir", "r", "--output-dir", "out")
    assert report.returncode == 0, report.stdout + report.stderr
    assert (elsewhere / "out" / "index.html").is_file()
    with open(elsewhere / "out" / "summary.csv") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert {v: (rows[v]["seeds_done"], rows[v]["seeds_expected"]) for v in rows} == {"a": ("2", "2"), "b": ("2", "2")}
    compare = run("benchmark", "compare", "--run-dir", "r", "--baseline", "a", "--candidate", "b", "--output-dir",
                  "cmp")
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "**env/reward_mean** (higher): **better**" in (elsewhere / "cmp" / "compare.md").read_text()
    # The default template is the one the wheel holds; the workload's module is shipped, though not its packages.
    dry = run("benchmark", "--backend", "slurm", "--command", "python -m trl_ppo.ppo", "--num-seeds", "2",
              "--workers", "2", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "#SBATCH --array=0-1%2" in dry.stdout and 'echo "Running task $SLURM_ARRAY_TASK_ID' in dry.stdout
    assert "no such" not in dry.stderr, dry.stderr
    # TensorBoard runs ask for the package the base install leaves out, by name, before reading anything.
    (elsewhere / "tb").mkdir()
    tensorboard = run("benchmark", "report", "--tensorboard-dir", "tb")
    assert tensorboard.returncode == 2 and "pip install tensorboard" in tensorboard.stderr, tensorboard.stderr

    assert looked_for(env) == []
    # The workload's flags are there; its trainer asks for the extra by name.
    ppo_help = run("python", "-m", "trl_ppo.ppo", "--help")
    assert ppo_help.returncode == 0 and "--ppo_config.model_name" in ppo_help.stdout, ppo_help.stderr
    ppo = run("python", "-m", "trl_ppo.ppo", "--ppo_config.steps", "1")
    assert ppo.returncode == 1 and 'pip install "trl-benchmark[ppo]"' in ppo.stderr, ppo.stderr
    assert "Traceback" not in ppo.stderr
    print(f"all in {time.monotonic() - started:.0f} s")
