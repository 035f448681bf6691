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
    lora = args.peft_config
    assert (args.use_peft, lora.r, lora.lora_alpha, lora.bias, lora.task_type, args.max_new_tokens) == (
        True, 16, 16, "none", "CAUSAL_LM", 32)
    assert not args.use_seq2seq and not args.trust_remote_code
    cfg = args.ppo_config
    # The seed's examples/scripts/ppo.py ScriptArguments.
    assert (cfg.model_name, cfg.query_dataset, cfg.reward_model, cfg.log_with) == (
        "lvwerra/gpt2-imdb", "imdb", "sentiment-analysis:lvwerra/distilbert-imdb", None)
    assert (cfg.batch_size, cfg.mini_batch_size, cfg.gradient_accumulation_steps) == (128, 128, 1)
    assert (cfg.early_stopping, cfg.target_kl, cfg.seed, cfg.score_clip) == (False, 6.0, 0, None)
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
        # time/ppo/total times the PPO step alone, as classic TRL's; time/total the whole iteration.
        rollout = metrics["time/generate"] + metrics["time/reward"]
        assert 0 < metrics["time/ppo/total"] <= metrics["time/total"] - rollout < metrics["time/ppo/total"] + 0.05
        assert metrics["perf/samples_per_s"] == pytest.approx(16 / metrics["time/total"])
    # The cumulative counters a report's samples and tokens x-axes read.
    assert [m["counters/samples"] for m in returned] == [16, 32]
    lengths = [m["tokens/responses_len_mean"] * 16 for m in returned]
    assert [m["counters/tokens"] for m in returned] == pytest.approx([lengths[0], lengths[0] + lengths[1]])


def test_classic_flags_run_or_are_refused_by_name() -> None:
    """Classic PPOConfig flags: the implemented ones parse, the no-ops parse, the rest exit 2 naming the flag."""
    args = parse(["--ppo_config.use_score_scaling", "--ppo_config.use_score_norm", "--ppo_config.score_clip", "3",
                  "--ppo_config.ratio_threshold", "5", "--ppo_config.optimize_device_cache",
                  "--ppo_config.dataset_num_proc", "4", "--ppo_config.task_name", "sentiment"])
    cfg = args.ppo_config
    assert (cfg.use_score_scaling, cfg.use_score_norm, cfg.score_clip, cfg.ratio_threshold) == (True, True, 3, 5)
    done = subprocess.run(
        [sys.executable, "-m", "trl_ppo.ppo", "--ppo_config.gradient_checkpointing"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 2
    assert "--ppo_config.gradient_checkpointing (a classic TRL flag) is not supported" in done.stderr
    help_text = subprocess.run([sys.executable, "-m", "trl_ppo.ppo", "--help"], capture_output=True, text=True,
                               timeout=120, cwd=Path(__file__).parents[2]).stdout
    assert "accepted for classic command lines; not used" in help_text
    assert "one pass over the prompts" in help_text


def test_run_is_one_pass_over_the_prompts_unless_steps_caps_it() -> None:
    from trl_ppo.ppo import run_length

    assert run_length(25_000, 128, 1, None) == 195  # the classic loop over its drop_last dataloader
    assert run_length(25_000, 128, 2, None) == 97
    assert run_length(25_000, 128, 1, 20_000) == 157  # ceil(20000 / 128)
    assert run_length(1_000, 128, 1, 20_000) == 7  # never past one pass


def test_reward_text_keeps_the_eos_as_classic_trl_decodes_it(assets: Path) -> None:
    from trl_ppo.ppo import rollout_texts

    tokenizer = load_tokenizer(str(assets / "gpt2-imdb"))
    eos = tokenizer.eos_token_id
    queries, responses = [torch.tensor([15496])], [torch.tensor([995, eos])]
    assert rollout_texts(tokenizer, queries, responses) == (["Hello"], [" world<|endoftext|>"])


def test_one_reward_call_gives_the_pipelines_logits(assets: Path) -> None:
    """The batched call returns the POSITIVE logits that the classic script's pipeline call (batch 16) gives."""
    reward = SentimentReward(f"sentiment-analysis:{assets / 'distilbert-imdb'}", torch.device("cpu"))
    texts = ["This movie was great", "Terrible.", "I went in expecting nothing and " * 40, "Meh<|endoftext|>",
             *[f"Review number {i}: it was {'good' if i % 2 else 'bad'}" for i in range(30)]]
    outputs = reward.pipe(texts, top_k=None, function_to_apply="none", batch_size=16, truncation=True)
    expected = [next(o["score"] for o in out if o["label"] == "POSITIVE") for out in outputs]
    torch.testing.assert_close(reward(texts), torch.tensor(expected), rtol=1e-4, atol=1e-5)


def test_bf16_log_probs_stay_close_to_float32(assets: Path) -> None:
    """Under bf16 autocast the output head, log-softmax and value head run in float32.

    On the stand-in (logits up to ~9) that keeps the log-probabilities within ~7e-4 of float32 on average;
    the head in bf16 is ~30x further off (GPT-2's logits reach ~100, where bf16's spacing is 0.5).
    """
    from trl_ppo.models import response_hidden

    policy, _ = load_policy(str(assets / "gpt2-imdb"), False, 16, 16, torch.device("cpu"))
    torch.manual_seed(0)
    input_ids = torch.randint(0, 50257, (16, 20))
    attention_mask, responses = torch.ones_like(input_ids), input_ids[:, -12:]
    with torch.no_grad():
        fp32, _, values, _ = policy(input_ids, attention_mask, responses, with_entropy=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _, bf16_values, _ = policy(input_ids, attention_mask, responses, with_entropy=False)
            hidden = response_hidden(policy.lm, input_ids, attention_mask, 12)
            head_in_bf16 = policy.lm.lm_head(hidden).log_softmax(-1).gather(-1, responses[..., None]).squeeze(-1)
    assert bf16.dtype == bf16_values.dtype == torch.float32
    error, naive_error = (bf16 - fp32).abs().mean().item(), (head_in_bf16.float() - fp32).abs().mean().item()
    assert error < 2e-3 and naive_error > 10 * error, (error, naive_error)
    assert (bf16_values - values).abs().max() < 0.02
