#!/usr/bin/env bash
# Study 1: the PPO baseline over the seeds (TRL's benchmark_level1.sh). Flags: see studies/lib.sh.
source "$(dirname "$0")/lib.sh"
run_study baseline "--preset baseline" --command "$PPO --ppo_config.exp_name ppo"
