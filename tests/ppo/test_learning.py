"""End-to-end PPO on the offline stand-ins: it learns, it is reproducible, accumulation splits only work."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean

import pytest
import torch
from safetensors.torch import load_file

# 12 PPO steps of 16 rollouts. Which prompts a step draws moves its mean reward more than 12 steps of
# learning do: with a learning rate too small to change anything, the mean of the last 6 steps minus
# that of the first 6 is +0.21, -0.18, +0.02 in seeds 0, 1, 2. So learning is measured against such a
# control run of the same seed: the same prompts, and the same sampling noise until the policies part.
# Measured gains over the control, last 6 steps (results/ppo/learning_vs_control_cpu_2026-12-05.txt):
# +0.55, +0.44, +0.38 for the whole model in seeds 0, 1, 2 (+0.49, +0.75, +0.26 with the sampling draws of
# 2026-12-01); settings that do not learn scored -0.2 to +0.1 (learning_vs_control_cpu_2026-12-01.txt).
STEPS = 12
WINDOW = 6
MIN_GAIN = 0.25
NO_LEARNING = ["--ppo_config.learning_rate", "1e-12", "--ppo_config.ppo_epochs", "1"]


def learned(run_ppo, *flags: str, save_to: Path | None = None) -> tuple[float, list[dict[str, float]]]:
    """How far PPO raised the mean reward of the last WINDOW steps above the control run's; and the history."""
    saving = ["--output_dir", str(save_to)] if save_to else []
    history, control = run_ppo(*flags, *saving), run_ppo(*flags, *NO_LEARNING)
    late = [mean(m["env/reward_mean"] for m in h[-WINDOW:]) for h in (history, control)]
    return late[0] - late[1], history


@pytest.mark.slow
def test_reward_rises_with_kl_bounded(run_ppo, small: list[str]) -> None:
    """Over seeds 0, 1, 2 the mean gain exceeds MIN_GAIN, and every seed's gain the no-learning band."""
    gains = []
    for seed in (0, 1, 2):
        # A target of 2 nats and a 10-step horizon make the controller act within the run.
        flags = [*small, "--ppo_config.steps", str(16 * STEPS), "--seed", str(seed),
                 "--ppo_config.target", "2", "--ppo_config.horizon", "160"]
        gain, history = learned(run_ppo, *flags)
        gains.append(gain)
        kls = [m["objective/kl"] for m in history]
        assert max(kls) < 4 * 2, kls
        # Ziegler et al.'s controller, by hand: the error kl / target - 1 clipped to +-20%, times the share
        # of the 160-sample horizon that one batch of 16 covers.
        for before, after in zip(history, history[1:], strict=False):
            error = min(max(before["objective/kl"] / 2 - 1, -0.2), 0.2)
            assert after["objective/kl_coef"] == pytest.approx(before["objective/kl_coef"] * (1 + error * 16 / 160))
        assert any(m["objective/kl"] > 2 for m in history)  # the run did go above target
    assert mean(gains) > MIN_GAIN and min(gains) > 0.1, gains


@pytest.mark.slow
def test_same_seed_same_curve(run_ppo, small: list[str]) -> None:
    flags = [*small, "--ppo_config.steps", "48"]  # 3 steps
    keys = ["env/reward_mean", "objective/kl", "ppo/loss/total"]
    first, second, other = ([[m[k] for k in keys] for m in run_ppo(*flags, "--seed", seed)] for seed in "778")
    assert first == second
    assert other != first  # the seed is used


@pytest.mark.slow
def test_peft_learns_with_few_trainable_parameters(run_ppo, small: list[str], tmp_path: Path) -> None:
    """LoRA on the stand-in: adapters on attention and on the output projection.

    Adapters on attention alone (PEFT's default for GPT-2, c_attn) do not learn on this 2-layer
    stand-in, whose word preferences live in its embeddings (gains over the control in results/ppo/).
    With the output projection adapted as well they do: rank 4, lr 2e-2 gains +0.11, +0.67, +0.52 in
    seeds 0, 1, 2 (+0.33, +0.41, +0.31 with the sampling draws of 2026-12-01); seed 1 is checked here.
    """
    from trl_ppo.models import load_policy, trainable_fraction

    gain, history = learned(
        run_ppo, *small, "--use_peft", "--lora_r", "4", "--lora_target_modules", "c_attn", "lm_head", "--seed", "1",
        "--ppo_config.learning_rate", "2e-2", "--ppo_config.steps", str(16 * STEPS), save_to=tmp_path,
    )
    assert gain > MIN_GAIN, [round(m["env/reward_mean"], 2) for m in history]
    # What was saved is what ran: trained adapters (LoRA's B starts at zero) with their settings.
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["r"], set(saved["target_modules"])) == (4, {"c_attn", "lm_head"})
    adapters = load_file(tmp_path / "adapter_model.safetensors")
    lora_b = [name for name in adapters if "lora_B" in name]
    assert len(lora_b) == 3 and all(adapters[name].abs().max() > 0 for name in lora_b)  # 2 layers' c_attn, lm_head
    # The value head beside the adapters, as classic TRL saves it.
    assert set(torch.load(tmp_path / "pytorch_model.bin")) == {"v_head.summary.weight", "v_head.summary.bias"}
    policy, reference = load_policy(
        saved["base_model_name_or_path"], use_peft=True, lora_r=4, lora_alpha=16, device=torch.device("cpu"),
        lora_target_modules=saved["target_modules"],
    )
    trainable, total = trainable_fraction(policy)
    # 2.9%: the stand-in is mostly its 50,257 x 128 embedding, and the output projection's adapter
    # has a row per token (on gpt2 the same adapters are 0.3% of the model).
    assert reference is None and trainable / total < 0.05


@pytest.mark.slow
def test_accumulation_splits_work_not_the_update(
    run_ppo, assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One PPO step on 128 rollouts: 128 x 1 and 16 x 8 (mini batch x accumulation) give one update.

    Plain SGD (lr 1) in place of Adam, so the update is the gradient itself: Adam's first step divides
    each gradient by its own size, and would hide a sum where a mean belongs.
    """
    monkeypatch.setattr(torch.optim, "Adam", torch.optim.SGD)
    common = ["--ppo_config.batch_size", "128", "--ppo_config.steps", "128", "--ppo_config.ppo_epochs", "1",
              "--max_new_tokens", "4", "--ppo_config.learning_rate", "1"]
    initial = load_file(assets / "gpt2-imdb" / "model.safetensors")
    updates, value_heads = [], []
    for mini, accumulation in [(128, 1), (16, 8)]:
        out = tmp_path / f"{mini}x{accumulation}"
        run_ppo(*common, "--ppo_config.mini_batch_size", str(mini),
                "--ppo_config.gradient_accumulation_steps", str(accumulation), "--output_dir", str(out))
        weights = load_file(out / "model.safetensors")
        updates.append({name: weights[name] - tensor for name, tensor in initial.items()})
        # Saved with the weights, as classic TRL saves it; both start from the same seeded head.
        value_heads.append({name: tensor for name, tensor in weights.items() if name.startswith("v_head.")})
    largest = max(u.abs().max().item() for u in updates[0].values())
    assert largest > 1e-4  # the step did move the weights
    for name, update in updates[0].items():
        torch.testing.assert_close(updates[1][name], update, rtol=1e-3, atol=1e-4 * largest, msg=name)
    assert len(value_heads[0]) == 2  # weight and bias
    for name, tensor in value_heads[0].items():
        torch.testing.assert_close(value_heads[1][name], tensor, rtol=0, atol=1e-5, msg=name)


def test_bad_settings_fail_before_loading(tmp_path: Path) -> None:
    """Checked before anything loads: the model named here does not exist."""
    from trl_ppo.ppo import Args, ConfigError, PPOConfig, train

    bad = PPOConfig(model_name=str(tmp_path / "missing"), batch_size=128, mini_batch_size=16,
                    gradient_accumulation_steps=3)
    with pytest.raises(ConfigError, match=r"multiple of mini_batch_size x gradient_accumulation_steps"):
        train(Args(ppo_config=bad))
    with pytest.raises(ConfigError, match=r"query_min_length"):
        train(Args(ppo_config=PPOConfig(model_name=str(tmp_path / "missing")), query_min_length=8))
    with pytest.raises(ConfigError, match=r"<task>:<model>"):
        train(Args(ppo_config=PPOConfig(model_name=str(tmp_path / "missing"), reward_model="distilbert")))


def test_cli_reports_bad_settings() -> None:
    """Through the script path, which must work besides `python -m trl_ppo.ppo`."""
    done = subprocess.run(
        [sys.executable, "trl_ppo/ppo.py", "--ppo_config.batch_size", "100",
         "--ppo_config.mini_batch_size", "16", "--ppo_config.gradient_accumulation_steps", "8"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 1
    assert "error: batch_size (100) must be a multiple" in done.stderr


@pytest.mark.slow
def test_bf16_changes_the_arithmetic_not_the_algorithm(run_ppo, small: list[str]) -> None:
    # The GPU test cannot tell an ignored --bf16 from a working one; here bf16 autocast runs on the CPU.
    keys = ["env/reward_mean", "ppo/loss/total", "ppo/policy/ratio"]
    fp32, bf16 = (run_ppo(*small, "--ppo_config.steps", "16", *flags)[0] for flags in ([], ["--bf16"]))
    fp32, bf16 = [fp32[k] for k in keys], [bf16[k] for k in keys]
    assert bf16 != fp32
    assert all(math.isfinite(v) for v in bf16)
    assert abs(bf16[2] - 1) < 0.1  # fresh rollouts' log-probabilities reproduced closely, even in bf16


@pytest.mark.slow
def test_optional_paths_run(run_ppo, small: list[str]) -> None:
    """Exact KL, reward whitening, gradient clipping, early stopping and a fixed KL coefficient together."""
    history = run_ppo(
        *small, "--ppo_config.steps", "48", "--ppo_config.kl_penalty", "full", "--ppo_config.whiten_rewards",
        "--ppo_config.max_grad_norm", "1", "--ppo_config.early_stopping", "--ppo_config.target_kl", "0.001",
        "--ppo_config.no_adap_kl_ctrl", "--ppo_config.init_kl_coef", "0.1",
    )
    assert [m["objective/kl_coef"] for m in history] == [0.1] * 3  # fixed, though KL moves
    assert history[-1]["objective/kl"] != 0
    assert all(math.isfinite(v) for m in history for v in m.values()), history


# Each process trains as `python -m trl_ppo.ppo` does, then saves its own policy, so that the test can
# compare the processes' weights (only rank 0 saves through --output_dir).
EACH_RANK_SAVES = """
import os, sys, torch
from trl_ppo import ppo
policies = []
load = ppo.load_policy
def load_and_keep(*args, **kwargs):
    policy, reference = load(*args, **kwargs)
    policies.append(policy)
    return policy, reference
ppo.load_policy = load_and_keep
out = sys.argv[sys.argv.index("--output_dir") + 1]
history = ppo.train(ppo.parse(sys.argv[1:]))
torch.save(policies[0].state_dict(), os.path.join(out, "rank" + os.environ["RANK"] + ".pt"))
torch.save(history, os.path.join(out, "history" + os.environ["RANK"] + ".pt"))
"""


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(stand_in_flags: list[str], tmp_path: Path) -> None:
    """DDP under `accelerate launch`, here on CPU (gloo): each process its own rollouts, one update."""
    script = tmp_path / "each_rank_saves.py"
    script.write_text(EACH_RANK_SAVES)
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
         *stand_in_flags, "--ppo_config.batch_size", "8", "--ppo_config.mini_batch_size", "4",
         "--ppo_config.gradient_accumulation_steps", "2", "--ppo_config.steps", "16", "--max_new_tokens", "4",
         "--output_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("step 2/2") == 1  # only rank 0 reports
    assert (tmp_path / "model.safetensors").exists()
    # Gradients are averaged over the processes, so both hold the same weights after two updates.
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    initial = load_file(Path(stand_in_flags[1]) / "model.safetensors")
    assert any(not torch.equal(ranks[0][f"lm.{name}"], tensor) for name, tensor in initial.items())  # they moved
    for name, tensor in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], tensor, rtol=0, atol=1e-6, msg=name)
    # Every statistic is averaged over the processes, so both report the same numbers (timers aside),
    # which neither process's own rollouts give alone.
    histories = [torch.load(tmp_path / f"history{rank}.pt") for rank in (0, 1)]
    for mine, other in zip(*histories, strict=True):
        stats = [k for k in mine if not k.startswith(("time/", "perf/"))]
        assert {k: mine[k] for k in stats} == {k: other[k] for k in stats}
    assert len(stats) >= 30 and histories[0][0]["ppo/loss/total"] != 0


def test_each_process_gets_its_own_prompts() -> None:
    from trl_ppo.ppo import batches

    per_rank = [torch.cat(list(batches(100, 8, 5, seed=3, rank=rank, world=2))) for rank in (0, 1)]
    assert all(len(rows) == 40 and len(set(rows.tolist())) == 40 for rows in per_rank)
    assert not set(per_rank[0].tolist()) & set(per_rank[1].tolist())
