"""TRL's own benchmark lines (its README and benchmark_level3.sh) run verbatim from the repo root."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cli import REPO, clean_env, run_cli

SCRIPT = "examples/scripts/ppo.py"
FLAGS = ("--num-seeds 5 --start-seed 1 --workers 10 --slurm-nodes 1 --slurm-gpus-per-task 1 --slurm-ntasks 1 "
         "--slurm-total-cpus 12 --slurm-template-path benchmark/trl.slurm_template")
COMMANDS = [
    f"python {SCRIPT} --ppo_config.log_with wandb",
    f"python {SCRIPT} --ppo_config.log_with wandb --ppo_config.mini_batch_size 1 "
    "--ppo_config.gradient_accumulation_steps 128",
    f"python {SCRIPT} --ppo_config.log_with wandb --ppo_config.model_name gpt2-xl --ppo_config.mini_batch_size 16 "
    "--ppo_config.gradient_accumulation_steps 8",
    f"python {SCRIPT} --ppo_config.log_with wandb --ppo_config.model_name tiiuae/falcon-rw-1b",
    f"python {SCRIPT} --ppo_config.log_with wandb --use_peft",
]
# As a user types them; `python benchmark/benchmark.py` is what run_cli runs.
LINES = [f'python benchmark/benchmark.py --command "{command}" {FLAGS}' for command in COMMANDS]


def test_the_wheel_ships_the_default_template(tmp_path: Path) -> None:
    """Installed from the wheel, away from any checkout, a Slurm sweep without --slurm-template-path renders
    the template the wheel holds."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("benchmark/trl.slurm_template") == (REPO / "templates" / "trl.slurm_template").read_bytes()
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([sys.executable, "-c", "import benchmark; print(benchmark.__file__)"], cwd=elsewhere,
                           env=clean_env(PYTHONPATH=str(site)), capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(site / "benchmark" / "__init__.py")
    done = subprocess.run(
        [sys.executable, "-m", "benchmark", "--command", "python -c pass", "--num-seeds", "2", "--workers", "1",
         "--backend", "slurm", "--dry-run"],
        cwd=elsewhere, env=clean_env(PYTHONPATH=str(site)), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --array=0-1%1" in done.stdout and 'echo "Running task $SLURM_ARRAY_TASK_ID' in done.stdout


def trl_line(line: str, *more: str, env: dict[str, str] | None = None):
    words = shlex.split(line)
    assert words[:2] == ["python", "benchmark/benchmark.py"]
    return run_cli(*words[2:], *more, cwd=REPO, env=env)


def test_trls_template_path_is_ours() -> None:
    link = REPO / "benchmark" / "trl.slurm_template"
    # Relative, so that it holds in any checkout.
    assert os.readlink(link) == "../templates/trl.slurm_template"
    assert link.resolve() == (REPO / "templates" / "trl.slurm_template").resolve()


@pytest.mark.parametrize("line", LINES, ids=["baseline", "grad-accum", "gpt2-xl", "falcon", "peft"])
def test_a_trl_line_renders_its_array_and_warns_only_of_a_missing_script(line: str) -> None:
    missing = not (REPO / SCRIPT).is_file()  # another change adds it
    result = trl_line(line, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "#SBATCH --array=0-4%10\n" in result.stdout and "seeds=(1 2 3 4 5)" in result.stdout
    wrapped = shlex.quote(shlex.split(line)[3] + ' "$@"')
    assert f'srun bash -c {wrapped} bash --seed "$seed"' in result.stdout
    assert (f": python {SCRIPT}: no such file in {REPO}\n" in result.stderr) == missing, result.stderr
    # The same line, its script's name mistyped: warned of, not refused (it may exist on the cluster only).
    mistyped = trl_line(line.replace(SCRIPT, "examples/scripts/ppo_typo.py"), "--dry-run")
    assert mistyped.returncode == 0, mistyped.stderr
    assert f": python examples/scripts/ppo_typo.py: no such file in {REPO}\n" in mistyped.stderr


def test_a_missing_script_or_module_is_warned_of(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "there.py").touch()
    (tmp_path / "here.py").touch()
    commands = {
        "gone": "python gone.py",
        "cd": "cd sub && python there.py",
        "env": "A=1 python3 -u here.py",
        "accelerate": "accelerate launch --num_processes 2 sub/gone.py",
        "torchrun": "torchrun --nproc_per_node 2 -m no_such_pkg.train",
        "stdlib": "python -m json.tool",
        "submodule": "python -m json.no_such",
        "shell": "cd $HOME && python anything.py",
    }
    args = [arg for name, command in commands.items() for arg in ("--command", f"{name}={command}")]
    result = run_cli(*args, "--num-seeds", "1", "--workers", "1", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    python = f"this Python ({result.args[0]})"  # the harness's, which looks for the modules
    assert sorted(line for line in result.stderr.splitlines() if line.startswith("warning:")) == [
        f"warning: accelerate: accelerate launch sub/gone.py: no such file in {tmp_path}",
        f"warning: gone: python gone.py: no such file in {tmp_path}",
        f"warning: submodule: python -m json.no_such: no such module in {tmp_path} or in {python}",
        f"warning: torchrun: torchrun -m no_such_pkg.train: no such module in {tmp_path} or in {python}",
    ]


def test_workers_0_with_a_template_writes_the_scripts_and_submits_nothing(tmp_path: Path) -> None:
    bin_dir, called = tmp_path / "bin", tmp_path / "sbatch-called"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {called}\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}")
    run_dir = tmp_path / "r"
    result = trl_line(LINES[0], "--workers", "0", "--run-dir", str(run_dir), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not called.exists(), called.read_text()
    script = run_dir / "scripts" / "ppo-log_with-wandb.sh"
    assert f"to submit it: sbatch {script}\n" in result.stdout
    assert "nothing submitted: --workers 0 writes the scripts only" in result.stdout
    text = script.read_text()
    assert "#SBATCH --array=0-4\n" in text and "seeds=(1 2 3 4 5)" in text
    assert (run_dir / "logs").is_dir()  # sbatch would not make the folder of a task's log
    # No manifest: status and resume say so, and have nothing to act on.
    assert not (run_dir / "manifest.jsonl").exists()
    for subcommand in ("status", "resume"):
        refused = run_cli(subcommand, str(run_dir), cwd=tmp_path, env=env)
        assert refused.returncode == 2 and f"{run_dir} holds no manifest.jsonl" in refused.stderr
    assert not called.exists()


def test_workers_0_never_writes_into_a_run(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "manifest.jsonl").write_text("")
    result = trl_line(LINES[0], "--workers", "0", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2 and f"error: {tmp_path / 'r'} holds a run already" in result.stderr
    assert not (tmp_path / "r" / "scripts").exists()
