"""What the harness knows about the workload it was born to benchmark: TRL's PPO scripts.

Everything TRL-specific lives here; planning, backends and report only read these names, so another
workload is a change of this one file.
"""

from __future__ import annotations

# The flags whose value names a variant (TRL's `--ppo_config.exp_name`, and its dashed spellings).
EXP_NAME_FLAGS = ("--ppo_config.exp_name", "--exp-name", "--exp_name")
# Classic TRL (0.4 - 0.11) logs its PPOConfig under this W&B config key; trl_ppo does the same.
CONFIG_KEY = "trl_ppo_trainer_config"
# The config key holding a run's seed: matches a W&B run to its job when no W&B id was handed down
# (a template that exports none of the harness's variables, as TRL's own does not).
SEED_KEY = "seed"
REWARD, KL = "env/reward_mean", "objective/kl"
# What a report plots and tabulates unless --metrics says otherwise.
DEFAULT_METRICS = (REWARD, KL)
SAMPLES_PER_S = "perf/samples_per_s"
# Which way is better, for `benchmark compare`; a metric not named here has no better direction.
METRIC_DIRECTIONS = {REWARD: "higher", SAMPLES_PER_S: "higher", KL: "two-sided"}
