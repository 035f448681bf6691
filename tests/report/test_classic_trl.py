"""A run written by classic TRL 0.11.4's PPOTrainer reads and reports as ours do (classic_trl/write_run.py)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from benchmark.report import offline

RUNS = Path(__file__).parent / "classic_trl"
# The scalar names classic TRL logs (../shared/README.md); histograms and tables are not curves.
CLASSIC_SCALARS = {
    "env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "objective/entropy",
    "ppo/mean_scores", "ppo/std_scores", "ppo/mean_non_score_reward", "ppo/learning_rate",
    *(f"ppo/loss/{k}" for k in ("policy", "value", "total")),
    *(f"ppo/policy/{k}" for k in ("entropy", "approxkl", "policykl", "clipfrac", "advantages_mean")),
    "ppo/returns/mean", "ppo/returns/var",
    *(f"ppo/val/{k}" for k in ("vpred", "error", "clipfrac", "mean", "var", "var_explained")),
    *(f"tokens/{k}_len_{s}" for k in ("queries", "responses") for s in ("mean", "std")),
    *(f"time/ppo/{k}" for k in ("forward_pass", "compute_rewards", "compute_advantages", "optimize_step",
                                "calc_stats", "total")),
}


def test_classic_trl_history_and_config_read_back() -> None:
    (path,) = offline.find_run_files(RUNS)
    run, damage = offline.read_run(path)
    assert damage is None and run.state == "finished"
    assert run.history["env/reward_mean"].tolist() == [1.5, 2.5, 3.5]
    assert run.history["_step"].tolist() == [0, 1, 2]
    assert set(run.history.columns) >= CLASSIC_SCALARS, CLASSIC_SCALARS - set(run.history.columns)
    assert run.config["trl_ppo_trainer_config"]["exp_name"] == "classic_trl"


def test_classic_trl_run_is_reported_under_its_exp_name(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmark.report", "--wandb-dir", str(RUNS), "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (row,) = csv.DictReader((tmp_path / "summary.csv").open())
    assert row["variant"] == "classic_trl" and row["seeds_done"] == "1"
    # One seed: the final reward is the mean of its last steps (all three here).
    assert float(row["reward_mean"]) == 2.5
    assert (tmp_path / "curves.png").stat().st_size > 10_000
