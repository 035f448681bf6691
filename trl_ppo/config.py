"""The command line of `python -m trl_ppo.ppo`: classic TRL's PPOConfig and the sentiment script's flags.

Kept apart from trl_ppo/ppo.py, and free of torch, transformers, peft and accelerate, because those imports
take seconds: `python -m trl_ppo.ppo --help` and a refused flag answer from this module alone, before the
trainer loads. `from trl_ppo import PPOConfig` and `from trl_ppo.ppo import PPOConfig` give this module's class.
"""

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Literal

import tyro

# trl_ppo.core.KLPenalty's values (core imports torch; tests/ppo/test_help.py checks that the two agree).
KLPenalty = Literal["kl", "abs", "mse", "full"]


@dataclass
class PPOConfig:
    """The classic trl.PPOConfig fields, with their classic defaults."""

    exp_name: str = "ppo"
    """experiment name: the W&B group, and the start of the run name"""
    seed: int = 0
    """random seed (the top-level --seed overrides it)"""
    log_with: Literal["wandb", "tensorboard", "none"] | None = None
    """where to log metrics under the classic names: W&B, or TensorBoard event files (under --output_dir, else
    ./runs); None (classic TRL's default) or none logs nothing"""
    tracker_project_name: str = "trl"
    """W&B project"""
    model_name: str = "lvwerra/gpt2-imdb"
    """policy: a causal LM hub name or local folder"""
    query_dataset: Annotated[str, tyro.conf.arg(aliases=("--query_dataset",))] = "imdb"
    """prompts: a dataset name or folder for `datasets.load_dataset`, with a `text` column"""
    reward_model: str = "sentiment-analysis:lvwerra/distilbert-imdb"
    """reward: `<pipeline task>:<model>`; the score is the model's POSITIVE logit"""
    steps: int | None = None
    """cap on the rollouts to train on: at most ceil(steps / batch_size) PPO steps. By default, and never
    more than, one pass over the prompts, as the classic script's loop over its dataloader (drop_last)"""
    learning_rate: float = 1.41e-5
    """Adam learning rate"""
    adap_kl_ctrl: bool = True
    """adapt the KL coefficient to keep KL near `target`; otherwise keep `init_kl_coef`"""
    init_kl_coef: float = 0.2
    """initial coefficient of the per-token KL penalty"""
    kl_penalty: KLPenalty = "kl"
    """KL estimator: kl (log p - log q), abs, mse (half squared difference), full (exact, whole vocab)"""
    target: float = 6.0
    """target KL (summed over a response) of the adaptive controller"""
    horizon: float = 10000
    """rollouts over which the adaptive controller makes one full correction"""
    gamma: float = 1.0
    """discount"""
    lam: float = 0.95
    """GAE lambda"""
    cliprange: float = 0.2
    """policy ratio clip range"""
    cliprange_value: float = 0.2
    """value clip range"""
    vf_coef: float = 0.1
    """weight of the value loss"""
    batch_size: int = 128
    """rollouts per PPO step (per process)"""
    mini_batch_size: int = 128
    """rollouts per forward/backward pass"""
    gradient_accumulation_steps: int = 1
    """mini batches accumulated into one optimiser step"""
    ppo_epochs: int = 4
    """passes over each batch of rollouts"""
    early_stopping: bool = False
    """stop a PPO step's epochs once the policy KL exceeds 1.5 x target_kl"""
    target_kl: float = 6.0
    """policy KL bound for early_stopping"""
    max_grad_norm: float | None = None
    """clip the gradient norm to this (no clipping if unset)"""
    whiten_rewards: bool = False
    """whiten the per-token rewards (over the response tokens) before computing advantages"""
    ratio_threshold: float = 10.0
    """skip a mini batch (zero its loss, with a warning) whose mean policy ratio exceeds this"""
    use_score_scaling: bool = False
    """divide the scores by the running standard deviation of all scores so far"""
    use_score_norm: bool = False
    """with use_score_scaling, also subtract the running mean"""
    score_clip: float | None = None
    """clip the (scaled) scores to [-score_clip, score_clip]"""
    # Classic TRL flags accepted so that its command lines run; they change nothing here.
    task_name: str | None = None
    """accepted for classic command lines; not used"""
    remove_unused_columns: bool = True
    """PPOTrainer's dataloader drops the columns of a `datasets.Dataset` other than input_ids, attention_mask,
    label, query and response (the script's prompts never go through it)"""
    optimize_cuda_cache: bool | None = None
    """accepted for classic command lines; not used (nothing to free between passes)"""
    optimize_device_cache: bool = False
    """accepted for classic command lines; not used (nothing to free between passes)"""
    compare_steps: int = 1
    """accepted for classic command lines; not used (it paces push_to_hub_if_best_kwargs)"""
    dataset_num_proc: int | None = None
    """accepted for classic command lines; not used (the prompts are tokenised once, in one call)"""


# Classic PPOConfig flags that would change a run in a way this implementation does not offer.
REFUSED_CLASSIC_FLAGS = {
    "tracker_kwargs": "W&B settings come from WANDB_* variables (the harness sets them)",
    "accelerator_kwargs": "there is no Accelerator object; launch with `accelerate launch` or `torchrun`",
    "project_kwargs": "there is no Accelerator project; W&B settings come from WANDB_* variables",
    "push_to_hub_if_best_kwargs": "nothing is pushed to the hub; use --output_dir",
    "forward_batch_size": "removed in classic TRL too; use --ppo_config.mini_batch_size",
    "gradient_checkpointing": "not implemented",
}


@dataclass
class LoraArgs:
    """The classic script's `peft_config`: LoraConfig(r=16, lora_alpha=16, bias="none", task_type="CAUSAL_LM").

    The fields carry LoraConfig's own names: trl_ppo.ppo makes it as `LoraConfig(**asdict(peft_config))`."""

    r: Annotated[int, tyro.conf.arg(aliases=("--lora_r",))] = 16
    """LoRA rank"""
    lora_alpha: Annotated[int, tyro.conf.arg(aliases=("--lora_alpha",))] = 16
    """LoRA alpha"""
    target_modules: Annotated[list[str] | None, tyro.conf.arg(aliases=("--lora_target_modules",))] = None
    """modules that get adapters, e.g. `c_attn lm_head`; by default PEFT's choice for the model (GPT-2: c_attn)"""
    bias: Literal["none", "all", "lora_only"] = "none"
    """which biases train"""
    task_type: Literal["CAUSAL_LM"] = "CAUSAL_LM"
    """the PEFT task (causal LMs only)"""


# Flags of the classic script that this implementation refuses, with the reason.
REFUSED_SCRIPT_FLAGS = {
    "use_seq2seq": "encoder-decoder (seq2seq) policies are not supported; use a causal LM",
}


@dataclass
class Args:
    """PPO sentiment tuning; the flags of TRL's classic sentiment example (examples/scripts/ppo.py)."""

    ppo_config: PPOConfig = field(default_factory=PPOConfig)
    task: Literal["sentiment", "control"] = "sentiment"
    """sentiment: reward positive reviews (the gpt2-sentiment notebook); control: each query starts with a
    random [negative], [neutral] or [positive] and the reward pays for the sentiment it asks for (gpt2-control),
    logged per token as env/reward_mean/negative, ..."""
    seed: int | None = None
    """overrides ppo_config.seed (the benchmark harness appends it)"""
    use_seq2seq: bool = False
    """refused: encoder-decoder (seq2seq) policies are not supported"""
    use_peft: bool = False
    """train LoRA adapters instead of the whole model; the reference is the model with adapters off"""
    peft_config: LoraArgs = field(default_factory=LoraArgs)
    trust_remote_code: bool = False
    """passed to the policy's from_pretrained (as in the classic script): run the model's own code from the hub"""
    max_new_tokens: int = 32
    """tokens generated per response"""
    query_min_length: int = 2
    """shortest query, in tokens"""
    query_max_length: int = 8
    """query lengths are drawn from [query_min_length, query_max_length), as in TRL's LengthSampler"""
    bf16: bool = False
    """run generation and forward passes under bfloat16 autocast (weights and optimiser stay float32)"""
    output_dir: str | None = None
    """save the trained policy (or its adapters) with its value head, and the tokenizer, here (as classic TRL
    saves them: AutoModelForCausalLMWithValueHead.from_pretrained loads the folder back)"""
    table_every: int = 10
    """log a table of queries, responses and rewards every this many steps"""


class ConfigError(ValueError):
    """Settings that cannot work together; raised before anything loads."""


def config_errors(cfg: PPOConfig) -> list[str]:
    """What is wrong with a PPOConfig (empty when nothing is)."""
    backward_batch = cfg.mini_batch_size * cfg.gradient_accumulation_steps
    checks = [
        (cfg.batch_size > 0 and cfg.mini_batch_size > 0 and cfg.gradient_accumulation_steps > 0,
         "batch_size, mini_batch_size and gradient_accumulation_steps must be positive"),
        (cfg.batch_size % backward_batch == 0,
         f"batch_size ({cfg.batch_size}) must be a multiple of mini_batch_size x gradient_accumulation_steps "
         f"({cfg.mini_batch_size} x {cfg.gradient_accumulation_steps} = {backward_batch})"),
        ((cfg.steps is None or cfg.steps > 0) and cfg.ppo_epochs > 0, "steps and ppo_epochs must be positive"),
        (cfg.ratio_threshold > 0, "ratio_threshold must be positive"),
        (cfg.score_clip is None or cfg.score_clip > 0, "score_clip must be positive"),
        (cfg.learning_rate > 0, "learning_rate must be positive"),
        (cfg.init_kl_coef >= 0, "init_kl_coef must not be negative"),
        (not cfg.adap_kl_ctrl or (cfg.target > 0 and cfg.horizon > 0),
         "the adaptive KL controller needs target > 0 and horizon > 0"),
        (cfg.cliprange > 0 and cfg.cliprange_value > 0, "cliprange and cliprange_value must be positive"),
        (0 <= cfg.gamma <= 1 and 0 <= cfg.lam <= 1, "gamma and lam must lie in [0, 1]"),
        (not cfg.early_stopping or cfg.target_kl > 0, "early_stopping needs target_kl > 0"),
        (cfg.max_grad_norm is None or cfg.max_grad_norm > 0, "max_grad_norm must be positive"),
        (cfg.log_with in ("wandb", "tensorboard", "none", None),
         f"log_with must be wandb, tensorboard or none, got {cfg.log_with!r}"),
    ]
    return [message for ok, message in checks if not ok]


# Ends --help; `{prog}` is the command that runs the script.
EXAMPLES = """\
examples:
  {prog} --ppo_config.log_with wandb
  {prog} --use_peft --peft_config.r 16 --ppo_config.mini_batch_size 16 \\
      --ppo_config.gradient_accumulation_steps 8 --ppo_config.log_with tensorboard --output_dir out/peft
  python -m trl_ppo.offline_assets DIR  # offline stand-ins for the two models and the reviews, then:
  {prog} --task control --ppo_config.model_name DIR/gpt2-imdb \\
      --ppo_config.reward_model sentiment-analysis:DIR/distilbert-imdb --query_dataset DIR/imdb"""


def parse(argv: list[str] | None = None, prog: str = "python -m trl_ppo.ppo") -> Args:
    """The command line as TRL's examples spelled it (`--ppo_config.mini_batch_size`, `--use_peft`,
    `--query_dataset`, `--peft_config.r`).

    Classic flags that this implementation cannot honour are refused by name (exit 2). `--help` ends with
    EXAMPLES, written for `prog`.
    """
    argv = sys.argv[1:] if argv is None else argv
    for token in argv:
        flag = token.split("=")[0]
        name = flag.removeprefix("--ppo_config.").removeprefix("--ppo-config.").replace("-", "_")
        if token.startswith(("--ppo_config.", "--ppo-config.")) and name in REFUSED_CLASSIC_FLAGS:
            print(f"error: {flag} (a classic TRL flag) is not supported: {REFUSED_CLASSIC_FLAGS[name]}",
                  file=sys.stderr)
            sys.exit(2)
        name = flag.removeprefix("--").replace("-", "_")
        if flag.startswith("--") and name in REFUSED_SCRIPT_FLAGS:
            print(f"error: {flag} (a classic TRL flag) is not supported: {REFUSED_SCRIPT_FLAGS[name]}",
                  file=sys.stderr)
            sys.exit(2)
    with quiet_closed_pipe():
        try:
            return tyro.cli(Args, args=argv, prog=prog, use_underscores=True)
        except SystemExit as done:
            # tyro has no epilog: it prints the help and exits 0, and the examples follow.
            if done.code == 0 and not {"-h", "--help"}.isdisjoint(argv):
                print(f"\n{EXAMPLES.format(prog=prog)}", flush=True)
            raise


# The `ppo` extra: what `pip install trl-benchmark` (the harness alone) leaves out and the trainer imports.
WORKLOAD_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets")


def require_workload() -> None:
    """Exit with the install line when the trainer's packages are missing, instead of an import traceback."""
    if missing := [name for name in WORKLOAD_PACKAGES if importlib.util.find_spec(name) is None]:
        sys.exit(f"error: trl_ppo's trainer needs {', '.join(missing)}, which the base install of trl-benchmark "
                 'leaves out: pip install "trl-benchmark[ppo]"')


@contextmanager
def quiet_closed_pipe() -> Iterator[None]:
    """`--help | head`: once the reader has what it wanted, exit 0 without a BrokenPipeError traceback. The
    rest of the output goes to /dev/null, or Python would fail again flushing it at exit."""
    try:
        yield
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
