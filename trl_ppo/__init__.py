"""PPO sentiment tuning, and classic TRL's (0.11) PPO API: code written for `trl` runs with `trl_ppo` in its imports.

    from trl_ppo import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, create_reference_model, set_seed
    from trl_ppo.core import LengthSampler

The names load on first use, so that `python -m trl_ppo.ppo` and the light modules (`config`, `offline_assets`)
do not import the trainer first.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "PPOConfig": "trl_ppo.config",
    "PPOTrainer": "trl_ppo.ppo",
    "AutoModelForCausalLMWithValueHead": "trl_ppo.models",
    "create_reference_model": "trl_ppo.models",
    "set_seed": "trl_ppo.core",
    "LengthSampler": "trl_ppo.core",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trl_ppo' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
