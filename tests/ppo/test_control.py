"""Sentiment control as a workload: `python -m trl_ppo.ppo --task control` (the gpt2-control notebook's task)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_ppo.rewards import CONTROL_TOKENS, control_rewards


def test_rewards_are_shaped_as_the_control_notebook_shapes_them() -> None:
    logits = torch.tensor([4.0, 4.0, 4.0, -4.0, -4.0, -4.0, 0.5])
    tasks = torch.tensor([0, 1, 2, 0, 1, 2, 1])  # [negative], [neutral], [positive], ...
    assert control_rewards(logits, tasks).tolist() == [-4.0, -4.0, 4.0, 4.0, -4.0, -4.0, 3.0]


def test_control_run_logs_each_tokens_reward_and_its_rollouts(assets: Path, tmp_path: Path) -> None:
    """The user's command, W&B offline: every rollout's query starts with a control token, and
    env/reward_mean/<token> is the mean reward of the rollouts that asked for it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "trl_ppo.ppo", "--task", "control", "--seed", "3",
         "--ppo_config.model_name", str(assets / "gpt2-imdb"),
         "--ppo_config.reward_model", f"sentiment-analysis:{assets / 'distilbert-imdb'}",
         "--ppo_config.query_dataset", str(assets / "imdb"), "--ppo_config.log_with", "wandb",
         "--ppo_config.batch_size", "24", "--ppo_config.mini_batch_size", "24", "--ppo_config.ppo_epochs", "1",
         "--ppo_config.steps", "48", "--max_new_tokens", "4", "--table_every", "1"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "step 2/2: reward" in done.stdout and "(negative " in done.stdout

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("*.wandb")
    dump = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
                          capture_output=True, text=True, check=True, timeout=120).stdout
    records = [json.loads(line) for line in dump.splitlines()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert len(history) == 2
    for logged in history:
        table = json.loads((run_dir / "files" / logged["game_log.path"]).read_text())
        assert table["columns"] == ["query", "response", "reward"] and len(table["data"]) == 24
        by_token: dict[str, list[float]] = {token: [] for token in CONTROL_TOKENS}
        for query, _, reward in table["data"]:
            token = next(t for t in CONTROL_TOKENS if query.startswith(t))
            by_token[token].append(reward)
        for token, rewards in by_token.items():
            key = f"env/reward_mean/{token.strip('[]')}"
            if rewards:
                assert float(logged[key]) == pytest.approx(sum(rewards) / len(rewards), rel=1e-5), key
        all_rewards = [r for rewards in by_token.values() for r in rewards]
        assert float(logged["env/reward_mean"]) == pytest.approx(sum(all_rewards) / 24, rel=1e-5)
        # PPO is trained on the shaped rewards.
        assert float(logged["ppo/mean_scores"]) == pytest.approx(float(logged["env/reward_mean"]), rel=1e-5)
