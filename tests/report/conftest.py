"""A small sweep of real offline runs, written by the real `wandb` library, shared by the tests.

Variants follow TRL's benchmark: the baseline, step-level grad accumulation, a bigger model, and
PEFT, with classic TRL's metric names and config key. One more baseline seed fails (exit code 1),
one grad-accum seed is cut mid-file as if killed while writing, and one gpt2-xl seed never logs
the KL. Every logged number is kept, so tests compare against what was logged, not what was read.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wandb

BASE_MODEL = "lvwerra/gpt2-imdb"
VARIANTS: dict[str, dict[str, Any]] = {
    "sentiment_tuning": {"model_name": BASE_MODEL},
    "sentiment_tuning_step_grad_accu": {
        "model_name": BASE_MODEL,
        "mini_batch_size": 1,
        "gradient_accumulation_steps": 128,
    },
    "sentiment_tuning_gpt2xl_grad_accu": {
        "model_name": "gpt2-xl",
        "mini_batch_size": 16,
        "gradient_accumulation_steps": 8,
    },
    # Classic TRL logs no `use_peft`: the exp name is all that tells PEFT runs apart.
    "sentiment_tuning_peft": {"model_name": BASE_MODEL},
}
SEEDS = (1, 2)
STEPS = 40
BATCH_SIZE = 16
FAILED = ("sentiment_tuning", 3)
TRUNCATED = ("sentiment_tuning_step_grad_accu", 3)
NO_KL = ("sentiment_tuning_gpt2xl_grad_accu", 2)
# Bytes kept of the truncated run's file: past several 32 KiB blocks, inside some record.
TRUNCATE_AT = 100_000


@dataclass
class LoggedRun:
    variant: str
    seed: int
    name: str
    file: Path
    rows: list[dict[str, float]] = field(default_factory=list)  # numbers as passed to wandb.log
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sweep:
    """What the tests get: the folder, every run as logged, and which runs are the odd ones
    (tests cannot import conftest under --import-mode=importlib, so they come through here)."""

    wandb_dir: Path  # WANDB_DIR: runs are under wandb_dir/"wandb"
    runs: dict[tuple[str, int], LoggedRun]
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: tuple[int, ...] = SEEDS
    failed: tuple[str, int] = FAILED
    truncated: tuple[str, int] = TRUNCATED
    no_kl: tuple[str, int] = NO_KL
    truncate_at: int = TRUNCATE_AT


def trl_config(variant: str, seed: int) -> dict[str, Any]:
    ppo = {"exp_name": variant, "seed": seed, "batch_size": BATCH_SIZE, "learning_rate": 1.41e-5}
    return {"trl_ppo_trainer_config": ppo | VARIANTS[variant]}


def metrics(variant: str, seed: int, step: int, rng: random.Random) -> dict[str, float]:
    """A rising reward whose level depends on the variant, noisy per seed."""
    offset = list(VARIANTS).index(variant) * 0.5
    return {
        "env/reward_mean": offset + 0.05 * step + rng.gauss(0, 0.1),
        "env/reward_std": 1 + rng.random(),
        "objective/kl": 0.1 * step * (1 + 0.2 * seed) + rng.random() * 0.01,
        "objective/kl_coef": 0.2 * math.exp(-step / 100),
        "ppo/loss/total": rng.gauss(0, 1),
    }


def write_run(variant: str, seed: int, *, exit_code: int = 0, steps: int = STEPS) -> LoggedRun:
    """One run through the real wandb (WANDB_MODE=offline must be set), kept as logged."""
    name = f"{variant}-s{seed}"
    logged = LoggedRun(variant, seed, name, Path(), config=trl_config(variant, seed))
    rng = random.Random(f"{variant}/{seed}")
    run = wandb.init(project="trl", name=name, group="sweep", tags=["report-test"], config=logged.config)
    for step in range(steps):
        row = metrics(variant, seed, step, rng)
        if (variant, seed) == NO_KL:
            del row["objective/kl"]
        logged.rows.append(row)
        # Classic TRL also logs histograms and text: they must be read past, not plotted.
        run.log({**row, "env/reward_dist": wandb.Histogram([row["env/reward_mean"], 0.0, 1.0]), "note": "x"})
    logged.file = Path(run.dir).parent / f"run-{run.id}.wandb"
    run.finish(exit_code=exit_code)
    return logged


@pytest.fixture(scope="session")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """WANDB_MODE=offline in a fresh WANDB_DIR for the whole session; wandb torn down after."""
    wandb_dir = tmp_path_factory.mktemp("wandb")
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true")
    try:
        yield wandb_dir
    finally:
        wandb.teardown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def sweep(offline_env: Path) -> Sweep:
    runs = {(v, s): write_run(v, s) for v in VARIANTS for s in SEEDS}
    runs[FAILED] = write_run(*FAILED, exit_code=1)
    runs[TRUNCATED] = write_run(*TRUNCATED)
    # wandb-core may still be flushing after finish() returns; only teardown waits for the files.
    wandb.teardown()
    with open(runs[TRUNCATED].file, "r+b") as f:
        f.truncate(TRUNCATE_AT)
    return Sweep(offline_env, runs)
