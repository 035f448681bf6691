"""Writes the offline W&B run next to this file with classic TRL 0.11.4's PPOTrainer (log_with="wandb").

    pip install -e ".[bench]"   # trl==0.11.4
    python tests/report/classic_trl/write_run.py OUT_DIR   # then copy OUT_DIR/wandb/offline-run-*/run-*.wandb here

A random-init one-layer GPT-2 takes three PPO steps on fixed queries and responses; step s rewards
the four rollouts with s, s+1, s+2, s+3, so env/reward_mean is logged as 1.5, 2.5, 3.5.
"""

import os
import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

from trl_ppo.offline_assets import gpt2_tokenizer

out = Path(sys.argv[1])
os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(out), WANDB_SILENT="true")
tokenizer = gpt2_tokenizer(out / "tokenizer")
tokenizer.pad_token = tokenizer.eos_token
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).save_pretrained(out / "model")
config = PPOConfig(model_name="gpt2-classic", exp_name="classic_trl", batch_size=4, mini_batch_size=2,
                   log_with="wandb", tracker_project_name="trl", seed=0)
trainer = PPOTrainer(config, AutoModelForCausalLMWithValueHead.from_pretrained(str(out / "model")), None, tokenizer)
for step in range(3):
    queries = [torch.tensor(tokenizer.encode("This movie was")) for _ in range(4)]
    responses = [torch.tensor(tokenizer.encode(" good fun")) for _ in range(4)]
    rewards = [torch.tensor(float(step + i)) for i in range(4)]
    stats = trainer.step(queries, responses, rewards)
    trainer.log_stats(stats, {"query": ["q"] * 4, "response": ["r"] * 4}, rewards)
trainer.accelerator.end_training()
