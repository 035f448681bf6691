#!/usr/bin/env bash
# Study 5: sentiment control (TRL's gpt2-control notebook as a workload: python -m trl_ppo.ppo --task
# control). Each query starts with [negative], [neutral] or [positive]; the figure follows each token's
# reward over the steps. At --scale gpu, the notebook's settings (20 new tokens); at --scale cpu, 2 x --steps
# PPO steps of 32 rollouts at lr 1e-3 and 4 epochs: with 16 rollouts (about 5 per token) a step's signal is
# too noisy for the stand-in to follow three tasks.
source "$(dirname "$0")/lib.sh"
if [ "$SCALE" = gpu ]; then control="--task control --max_new_tokens 20"
else control="--task control --ppo_config.batch_size 32 --ppo_config.mini_batch_size 32 --ppo_config.ppo_epochs 4 \
--ppo_config.learning_rate 1e-3 --ppo_config.steps $((64 * STEPS))"; fi
metrics="env/reward_mean/negative env/reward_mean/neutral env/reward_mean/positive objective/kl"
run_study control "--metrics $metrics --name control" --command "$PPO --ppo_config.exp_name ppo_control $control"
