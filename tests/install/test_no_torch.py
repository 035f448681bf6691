"""The harness, the report and compare never import torch, transformers, peft, accelerate or datasets: not even a
look, recorded in every process they start, in this venv where all of them are installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli import clean_env, run_cli
from install.heavy import HEAVY, IMPORT_ALL, forget, looked_for, recording, write_job
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def write_tensorboard_run(folder: Path, seed: int) -> None:
    """A run as trl_ppo names and logs it, written with tensorboard's own writer (torch's needs torch)."""
    writer = EventFileWriter(str(folder))
    for step in range(5):
        value = Summary.Value(tag="env/reward_mean", simple_value=0.1 * step + seed)
        writer.add_event(Event(wall_time=1.7e9 + step, step=step, summary=Summary(value=[value])))
    writer.close()


def test_no_command_looks_for_the_workloads_packages(tmp_path: Path) -> None:
    env = recording(tmp_path / "recorder", clean_env(WANDB_MODE="offline", WANDB_SILENT="true"))
    # The recorder records: a look that found torch here, and one for each name it watches.
    subprocess.run([sys.executable, "-c", f"import importlib.util; [importlib.util.find_spec(n) for n in {HEAVY}]"],
                   env=env, check=True)
    assert [look["name"] for look in looked_for(env)] == list(HEAVY)
    forget(env)

    subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=tmp_path, env=env, check=True, timeout=120)
    assert run_cli("--help", cwd=tmp_path, env=env).returncode == 0
    # The jobs are the user's code, in this interpreter (a bare `python` on PATH may lack wandb).
    job = f"{sys.executable} {write_job(tmp_path)}"
    sweep = run_cli("--command", f"a={job}", "--command", f"b={job} --offset 1", "--num-seeds", "2", "--workers", "4",
                    "--run-dir", "r", cwd=tmp_path, env=env, timeout=300)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    status = run_cli("status", "r", cwd=tmp_path, env=env)
    assert status.returncode == 0 and status.stdout.startswith("r: 4 COMPLETED"), status.stdout + status.stderr
    report = run_cli("report", "--run-dir", "r", "--output-dir", "out", cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "| b | 2 / 2 |" in (tmp_path / "out" / "summary.md").read_text()
    compare = run_cli("compare", "--run-dir", "r", "--baseline", "a", "--candidate", "b", "--output-dir", "cmp",
                      cwd=tmp_path, env=env)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert (tmp_path / "cmp" / "compare.json").is_file()
    for seed in (1, 2):
        write_tensorboard_run(tmp_path / "tb" / f"ppo__{seed}__0", seed)
    tensorboard = run_cli("report", "--tensorboard-dir", "tb", "--output-dir", "tb-out", cwd=tmp_path, env=env)
    assert tensorboard.returncode == 0, tensorboard.stdout + tensorboard.stderr
    assert "| ppo | 2 / 2 |" in (tmp_path / "tb-out" / "summary.md").read_text()

    assert looked_for(env) == []
