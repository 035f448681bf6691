#!/usr/bin/env bash
# Study 4: with and without PEFT (TRL's benchmark_level3.sh: --use_peft, LoRA r 16 on PEFT's default
# modules; at --scale cpu, r 4 on attention and the output projection at lr 2e-2, the setting that
# learns on the 2-layer stand-in, where attention alone does not: tests/ppo/test_learning.py).
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = gpu ]; then lora="--use_peft"
else lora="--use_peft --lora_r 4 --lora_target_modules c_attn lm_head --ppo_config.learning_rate 2e-2"; fi
run_study peft "--preset peft" --command "$PPO --ppo_config.exp_name ppo" --command "$PPO --ppo_config.exp_name ppo_peft $lora"
