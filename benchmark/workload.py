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
# The x-axes besides the step: trl_ppo logs cumulative rollouts and response tokens (all processes); for
# classic TRL runs the report derives them from the config's batch size and the mean response length.
SAMPLES_COUNTER, TOKENS_COUNTER = "counters/samples", "counters/tokens"
BATCH_SIZE_KEY, RESPONSE_LENGTH = "batch_size", "tokens/responses_len_mean"
# Which way is better, for `benchmark compare`; a metric not named here has no better direction.
METRIC_DIRECTIONS = {REWARD: "higher", SAMPLES_PER_S: "higher", KL: "two-sided"}
# The smallest difference that matters, in each metric's units (a verdict's epsilon unless --epsilon says): a
# tenth of a reward logit; half a nat of the summed KL, whose target is 6.
METRIC_EPSILONS = {REWARD: 0.1, KL: 0.5}
# Where a metric's values can lie: a band of mean ± std is kept inside (the summed KL's estimate is not below 0).
METRIC_LIMITS: dict[str, tuple[float | None, float | None]] = {KL: (0.0, None), "env/reward_std": (0.0, None)}
