"""Fixtures for the trl_ppo tests: offline stand-in assets built once, offline W&B, one CPU thread."""

import hashlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# huggingface_hub and datasets read these when first imported, so they are set before any import
# below: no hub access at all, and an empty hub cache, so that nothing comes from a model a
# developer happened to download once. Subprocesses inherit them.
CACHES = {var: tempfile.mkdtemp(prefix="trl_ppo_") for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE")}
os.environ.update(
    HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **CACHES
)

import pytest  # noqa: E402
import torch  # noqa: E402

from trl_ppo import offline_assets  # noqa: E402
from trl_ppo.ppo import parse, train  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_thread_and_cleanup() -> Iterator[None]:
    """One torch thread: the suite shares 2 cores with other work, and a second thread mostly waits.

    Afterwards the temporary caches go (datasets keeps a copy of the reviews there).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for folder in CACHES.values():
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def assets(request: pytest.FixtureRequest) -> Path:
    """The stand-ins, built by `python -m trl_ppo.offline_assets`'s code into the pytest cache.

    Keyed by the builder's source, so a changed builder rebuilds; a fresh checkout (CI) builds once.
    """
    key = hashlib.sha256(inspect.getsource(offline_assets).encode()).hexdigest()[:16]
    folder = Path(request.config.cache.mkdir("trl_ppo_assets")) / key
    if not (folder / "complete").exists():
        offline_assets.build(offline_assets.Args(out_dir=folder))
        (folder / "complete").touch()
    return folder


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
