"""TRL's classic sentiment example (examples/scripts/ppo.py of the `--ppo_config.*` era), run by trl_ppo.

The seed's command lines work as they are, from the repository root or anywhere else:

    python examples/scripts/ppo.py --ppo_config.log_with wandb
    python examples/scripts/ppo.py --ppo_config.model_name gpt2-xl --ppo_config.mini_batch_size 16 \\
        --ppo_config.gradient_accumulation_steps 8
    python examples/scripts/ppo.py --use_peft --peft_config.r 16 --ppo_config.log_with tensorboard

The flags (tyro `ScriptArguments`: `ppo_config`, `query_dataset`, `use_seq2seq`, `use_peft`, `peft_config`,
`trust_remote_code`; in trl_ppo.config) and the training loop are `python -m trl_ppo.ppo`'s: one implementation.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trl_ppo.config import parse, require_workload  # noqa: E402

if __name__ == "__main__":
    args = parse(prog="python examples/scripts/ppo.py")  # before the trainer's imports: --help answers at once
    require_workload()
    from trl_ppo.ppo import main

    main(args)
