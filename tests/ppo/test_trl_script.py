"""The seed's examples/scripts/ppo.py (TRL's `--ppo_config.*` era): its flags, defaults and TensorBoard logging."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trl_ppo.ppo import parse

ROOT = Path(__file__).parents[2]
SCRIPT = "examples/scripts/ppo.py"


def script(*flags: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, str(ROOT / SCRIPT) if cwd != ROOT else SCRIPT, *flags], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_help_from_the_repo_root_and_elsewhere_shows_the_seeds_defaults(tmp_path: Path) -> None:
    done = script("--help")
    assert done.returncode == 0, done.stderr
    help_text = " ".join(done.stdout.split())
    for flag in ["--ppo_config.log_with", "--query_dataset", "--use_seq2seq", "--use_peft", "--peft_config.r",
                 "--lora_r", "--peft_config.lora_alpha", "--lora_alpha", "--trust_remote_code"]:
        assert flag in help_text, flag
    for default in ["(default: lvwerra/gpt2-imdb)", "(default: imdb)", "{None,wandb,tensorboard,none}"]:
        assert default in help_text, default
    assert script("--help", cwd=tmp_path).returncode == 0


def test_seed_flags_parse_with_their_aliases() -> None:
    by_new, by_old = parse(["--peft_config.r", "4"]), parse(["--lora_r", "4"])
    assert by_new.peft_config == by_old.peft_config and by_new.peft_config.r == 4
    args = parse(["--query_dataset", "some/imdb", "--peft_config.lora_alpha", "8", "--trust_remote_code",
                  "--ppo_config.log_with", "None"])
    assert args.ppo_config.query_dataset == "some/imdb" and args.peft_config.lora_alpha == 8
    assert args.trust_remote_code and args.ppo_config.log_with is None
    assert parse(["--ppo_config.query_dataset", "other"]).ppo_config.query_dataset == "other"
    cfg = parse([]).ppo_config
    assert (cfg.model_name, cfg.query_dataset, cfg.target_kl, cfg.early_stopping, cfg.batch_size,
            cfg.mini_batch_size) == ("lvwerra/gpt2-imdb", "imdb", 6.0, False, 128, 128)


def test_use_seq2seq_is_refused_with_its_reason() -> None:
    done = script("--use_seq2seq")
    assert done.returncode == 2
    assert "--use_seq2seq (a classic TRL flag) is not supported: encoder-decoder" in done.stderr


def test_tiny_run_writes_tensorboard_events_under_the_classic_names(assets: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    done = script(
        "--ppo_config.model_name", str(assets / "gpt2-imdb"),
        "--ppo_config.reward_model", f"sentiment-analysis:{assets / 'distilbert-imdb'}",
        "--query_dataset", str(assets / "imdb"),
        "--ppo_config.batch_size", "8", "--ppo_config.mini_batch_size", "8", "--ppo_config.ppo_epochs", "1",
        "--ppo_config.steps", "16", "--max_new_tokens", "4", "--ppo_config.log_with", "tensorboard",
        "--output_dir", str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 2/2" in done.stdout
    (events,) = (tmp_path / "out").glob("ppo__0__*/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    for key in ["env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "ppo/loss/total",
                "ppo/policy/approxkl", "tokens/responses_len_mean", "time/ppo/total"]:
        assert key in scalars, key
    assert [e.step for e in accumulator.Scalars("env/reward_mean")] == [0, 1]
    assert {"env/reward_dist", "objective/kl_dist"} <= set(accumulator.Tags()["histograms"])
    assert (tmp_path / "out" / "config.json").exists()  # the policy is saved there too


@pytest.mark.parametrize("log_with", ["None", "none"])
def test_log_with_none_is_accepted(log_with: str) -> None:
    assert parse(["--ppo_config.log_with", log_with]).ppo_config.log_with in (None, "none")


def test_log_stats_writes_tensorboard_events(assets: Path, tmp_path: Path) -> None:
    """The classic API: PPOConfig(log_with="tensorboard") and `log_stats` write the classic names, a step each."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trl_ppo import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, set_seed
    from trl_ppo.models import load_tokenizer

    config = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, log_with="tensorboard", exp_name="api")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(assets / "gpt2-imdb"))
    trainer = PPOTrainer(config, model, tokenizer=load_tokenizer(str(assets / "gpt2-imdb")), logging_dir=str(tmp_path))
    queries = [torch.tensor([15496, 995]), torch.tensor([40])]
    for _ in range(2):
        responses = trainer.generate(queries, return_prompt=False, max_new_tokens=3, do_sample=True, top_k=0, top_p=1.0)
        rewards = [torch.tensor(1.0), torch.tensor(-1.0)]
        stats = trainer.step(queries, responses, rewards)
        trainer.log_stats(stats, {"query": ["a", "b"], "response": ["c", "d"]}, rewards)
    trainer.run.close()
    (folder,) = tmp_path.glob("api__0__*")
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    assert [e.value for e in accumulator.Scalars("env/reward_mean")] == [0.0, 0.0]
    assert [e.step for e in accumulator.Scalars("ppo/loss/total")] == [0, 1]
    assert "objective/logprobs" in accumulator.Tags()["histograms"]
    set_seed(0)  # what the trainer seeded is not left for the tests after this one
