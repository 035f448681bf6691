#!/usr/bin/env bash
# Study 2: with and without gradient accumulation, the same batch either way (TRL's benchmark_level3.sh:
# mini batch 1 x 128 accumulation against 128 x 1; at --scale cpu, 1 x 16 against 16 x 1).
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = gpu ]; then accumulated="--ppo_config.mini_batch_size 1 --ppo_config.gradient_accumulation_steps 128"
else accumulated="--ppo_config.mini_batch_size 1 --ppo_config.gradient_accumulation_steps 16"; fi
run_study grad_accum "--preset grad-accum" --command "$PPO --ppo_config.exp_name ppo" \
  --command "$PPO --ppo_config.exp_name ppo_step_grad_accu $accumulated"
