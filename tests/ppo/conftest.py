"""Fixtures for the trl_ppo tests: offline W&B, one CPU thread, the flags that select the stand-ins."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from trl_ppo.ppo import parse, train


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the suite shares 2 cores with other work, and a second thread mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """W&B in offline mode writing under tmp_path; yields its WANDB_DIR."""
    import wandb

    for var, value in {
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path),
        "WANDB_DATA_DIR": str(tmp_path / "data"), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
    }.items():
        monkeypatch.setenv(var, value)
    yield tmp_path
    wandb.teardown()


@pytest.fixture
def stand_in_flags(assets: Path) -> list[str]:
    """The flags a user passes to run on the stand-ins: the same path as hub names."""
    return [
        "--ppo_config.model_name", str(assets / "gpt2-imdb"),
        "--ppo_config.reward_model", f"sentiment-analysis:{assets / 'distilbert-imdb'}",
        "--ppo_config.query_dataset", str(assets / "imdb"),
    ]


@pytest.fixture
def small() -> list[str]:
    """A setting that learns at 1-3 s per step on one CPU thread: 16 rollouts of 8 tokens, lr 3e-3."""
    return [
        "--ppo_config.batch_size", "16", "--ppo_config.mini_batch_size", "16",
        "--ppo_config.learning_rate", "3e-3", "--ppo_config.ppo_epochs", "2", "--max_new_tokens", "8",
    ]


@pytest.fixture
def run_ppo(stand_in_flags: list[str]):
    """Parse CLI flags exactly as `python -m trl_ppo.ppo` does, on the stand-ins, and train."""

    def run(*flags: str) -> list[dict[str, float]]:
        return train(parse([*stand_in_flags, *flags]))

    return run
