#!/usr/bin/env bash
# Study 3: model sizes (TRL's benchmark_level3.sh: gpt2, gpt2-xl at mini batch 16 x 8, falcon-rw-1b; at
# --scale cpu, three GPT-2 stand-ins of 2 x 128, 4 x 192 and 6 x 256 layers x width, fitted alike).
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = gpu ]; then
  run_study model_size "--preset model-size" --command "$PPO --ppo_config.exp_name ppo_gpt2" \
    --command "$PPO --ppo_config.exp_name ppo_gpt2xl_grad_accu --ppo_config.model_name gpt2-xl \
--ppo_config.mini_batch_size 16 --ppo_config.gradient_accumulation_steps 8" \
    --command "$PPO --ppo_config.exp_name ppo_falcon_rw_1b --ppo_config.model_name tiiuae/falcon-rw-1b"
else
  # The later --ppo_config.model_name wins over the one in $PPO.
  run_study model_size "--preset model-size" --command "$PPO --ppo_config.exp_name ppo_gpt2" \
    --command "$PPO --ppo_config.exp_name ppo_gpt2_medium --ppo_config.model_name $ASSETS/gpt2-medium-imdb" \
    --command "$PPO --ppo_config.exp_name ppo_gpt2_large --ppo_config.model_name $ASSETS/gpt2-large-imdb"
fi
