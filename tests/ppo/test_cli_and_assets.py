"""The seed's command lines, the stand-in assets through the user path, and W&B logging."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_ppo.models import load_policy, load_tokenizer
from trl_ppo.ppo import parse
from trl_ppo.rewards import SentimentReward


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("--ppo_config.log_with wandb", {"log_with": "wandb"}),
        ("--ppo_config.mini_batch_size 1 --ppo_config.gradient_accumulation_steps 128",
         {"mini_batch_size": 1, "gradient_accumulation_steps": 128}),
        ("--ppo_config.model_name gpt2-xl --ppo_config.mini_batch_size 16 --ppo_config.gradient_accumulation_steps 8",
         {"model_name": "gpt2-xl", "mini_batch_size": 16, "gradient_accumulation_steps": 8}),
        ("--ppo_config.model_name tiiuae/falcon-rw-1b", {"model_name": "tiiuae/falcon-rw-1b"}),
    ],
)
def test_seed_command_lines_parse(line: str, expected: dict) -> None:
    # The harness appends --seed; train() lets it override ppo_config.seed (checked in the W&B test).
    args = parse([*shlex.split(line), "--seed", "3"])
    assert {k: getattr(args.ppo_config, k) for k in expected} == expected
    assert args.seed == 3 and args.ppo_config.seed == 0 and args.ppo_config.batch_size == 128


def test_use_peft_and_classic_defaults() -> None:
    args = parse(["--use_peft"])
    assert (args.use_peft, args.lora_r, args.lora_alpha, args.max_new_tokens) == (True, 16, 16, 32)
    cfg = args.ppo_config
    assert (cfg.model_name, cfg.query_dataset, cfg.reward_model) == (
        "gpt2", "stanfordnlp/imdb", "sentiment-analysis:lvwerra/distilbert-imdb")
    assert (cfg.learning_rate, cfg.init_kl_coef, cfg.target, cfg.horizon, cfg.ppo_epochs) == (1.41e-5, 0.2, 6, 10000, 4)
    assert (cfg.gamma, cfg.lam, cfg.cliprange, cfg.cliprange_value, cfg.vf_coef, cfg.kl_penalty) == (
        1, 0.95, 0.2, 0.2, 0.1, "kl")


def test_hub_names_are_never_replaced_by_stand_ins(assets: Path) -> None:
    """Offline, a hub name fails loudly instead of quietly loading something local."""
    with pytest.raises(OSError):
        load_tokenizer("lvwerra/gpt2-imdb")


def test_stand_ins_load_through_the_user_path(assets: Path) -> None:
    tokenizer = load_tokenizer(str(assets / "gpt2-imdb"))
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]  # the real GPT-2 tokenizer
    policy, reference = load_policy(str(assets / "gpt2-imdb"), False, 16, 16, torch.device("cpu"))
    assert policy.lm.config.vocab_size == 50257 and reference is not None
    reward = SentimentReward(f"sentiment-analysis:{assets / 'distilbert-imdb'}", torch.device("cpu"))
    good, bad = reward(["This movie was great, I loved it.", "This movie was terrible and boring."]).tolist()
    assert good > 1 > -1 > bad  # logits on about the original model's scale


def test_training_logs_classic_metrics_to_wandb(run_ppo, small: list[str], wandb_offline: Path) -> None:
    os.environ["WANDB_TAGS"] = "bench,ppo"
    try:
        returned = run_ppo(*small, "--ppo_config.steps", "32", "--ppo_config.log_with", "wandb",
                           "--ppo_config.exp_name", "sentiment", "--seed", "5", "--table_every", "1")
    finally:
        del os.environ["WANDB_TAGS"]
    (run_file,) = (wandb_offline / "wandb").glob("offline-run-*/run-*.wandb")
    dump = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
                          capture_output=True, text=True, check=True, timeout=120).stdout
    records = [json.loads(line) for line in dump.splitlines()]
    run = next(r["run"] for r in records if r["type"] == "run")
    history = [r["history"]["item"] for r in records if r["type"] == "history"]

    assert run["display_name"].startswith("sentiment__5__") and run["run_group"] == "sentiment"
    assert run["project"] == "trl" and run["tags"] == ["bench", "ppo"]
    assert run["config"]["update"]["trl_ppo_trainer_config"]["seed"] == 5
    assert [h["_step"] for h in history] == [0, 1]
    for key in ["env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "objective/entropy",
                "ppo/mean_scores", "ppo/loss/total", "ppo/policy/approxkl", "ppo/policy/clipfrac",
                "ppo/returns/mean", "ppo/val/var_explained", "tokens/responses_len_mean", "time/ppo/total",
                "perf/samples_per_s", "perf/tokens_per_s", "env/reward_dist._type", "game_log._type"]:
        assert key in history[-1], key
    # The values logged at each step are the step's own.
    for logged, metrics in zip(history, returned, strict=True):
        for key in ["env/reward_mean", "objective/kl", "ppo/loss/total", "perf/samples_per_s"]:
            assert float(logged[key]) == pytest.approx(metrics[key], rel=1e-6), key
