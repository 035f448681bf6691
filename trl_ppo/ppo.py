"""PPO sentiment tuning: the classic TRL algorithm (PPOTrainer, TRL <= 0.11) in one file.

A causal LM continues IMDB review openings; the reward is the POSITIVE logit of a sentiment
classifier; a per-token KL penalty keeps the policy near a frozen reference. Read `train` top to
bottom: rollout -> reward -> `PPOTrainer.step` (forward pass -> rewards -> advantages -> PPO epochs ->
statistics -> KL controller) -> logging. `PPOTrainer.step` takes the same inputs as classic TRL's
`PPOTrainer.step(queries, responses, scores)` and computes the same numbers (tests/ppo/test_parity.py).

    python -m trl_ppo.ppo --ppo_config.log_with wandb
    python -m trl_ppo.ppo --ppo_config.model_name DIR/gpt2-imdb \\
        --ppo_config.reward_model sentiment-analysis:DIR/distilbert-imdb --ppo_config.query_dataset DIR/imdb

(DIR from `python -m trl_ppo.offline_assets DIR`.) Under `accelerate launch` or `torchrun` every
process trains on its own device and its own `batch_size` rollouts; gradients are averaged (DDP).
"""

import math
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import tyro
from torch.nn.parallel import DistributedDataParallel
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

from trl_ppo import core
from trl_ppo.models import (
    PolicyWithValueHead,
    load_policy,
    load_tokenizer,
    output_head,
    reference_mode,
    response_hidden,
    trainable_fraction,
)
from trl_ppo.rewards import SentimentReward, parse_reward_model


@dataclass
class PPOConfig:
    """The classic trl.PPOConfig fields, with their classic defaults."""

    exp_name: str = "ppo"
    """experiment name: the W&B group, and the start of the run name"""
    seed: int = 0
    """random seed (the top-level --seed overrides it)"""
    log_with: Literal["wandb", "none"] = "none"
    """where to log metrics; `none` logs nothing and needs no W&B account"""
    tracker_project_name: str = "trl"
    """W&B project"""
    model_name: str = "gpt2"
    """policy: a causal LM hub name or local folder"""
    query_dataset: str = "stanfordnlp/imdb"
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
    kl_penalty: core.KLPenalty = "kl"
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
    target_kl: float = 1.0
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
    """accepted for classic command lines; not used (no dataset columns reach the trainer)"""
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
class Args:
    """PPO sentiment tuning; the flags of TRL's classic sentiment example."""

    ppo_config: PPOConfig = field(default_factory=PPOConfig)
    seed: int | None = None
    """overrides ppo_config.seed (the benchmark harness appends it)"""
    use_peft: bool = False
    """train LoRA adapters instead of the whole model; the reference is the model with adapters off"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 16
    """LoRA alpha"""
    lora_target_modules: list[str] | None = None
    """modules that get adapters, e.g. `c_attn lm_head`; by default PEFT's choice for the model (GPT-2: c_attn)"""
    max_new_tokens: int = 32
    """tokens generated per response"""
    query_min_length: int = 2
    """shortest query, in tokens"""
    query_max_length: int = 8
    """query lengths are drawn from [query_min_length, query_max_length), as in TRL's LengthSampler"""
    bf16: bool = False
    """run generation and forward passes under bfloat16 autocast (weights and optimiser stay float32)"""
    output_dir: str | None = None
    """save the trained policy (or its adapters), value head and tokenizer here"""
    table_every: int = 10
    """log a table of queries, responses and rewards every this many steps"""


class ConfigError(ValueError):
    """Settings that cannot work together; raised before anything loads."""


def validate(args: Args) -> None:
    cfg = args.ppo_config
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
        (1 <= args.query_min_length < args.query_max_length,
         "need 1 <= query_min_length < query_max_length (the upper end is exclusive)"),
        (args.max_new_tokens > 0, "max_new_tokens must be positive"),
        (not args.use_peft or (args.lora_r > 0 and args.lora_alpha > 0), "lora_r and lora_alpha must be positive"),
        (args.table_every > 0, "table_every must be positive"),
    ]
    errors = [message for ok, message in checks if not ok]
    try:
        parse_reward_model(cfg.reward_model)
    except ValueError as e:
        errors.append(str(e))
    if errors:
        raise ConfigError("; ".join(errors))


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from the variables `torchrun` / `accelerate launch` set."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all processes (itself when there is one)."""
    if not dist.is_initialized():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


def average(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each scalar averaged over all processes (itself when there is one), in one all-reduce."""
    if not dist.is_initialized():
        return metrics
    values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(metrics, (values / dist.get_world_size()).tolist(), strict=True))


def load_reviews(name: str) -> list[str]:
    """The prompts' source, as in the classic script: training reviews longer than 200 characters."""
    from datasets import load_dataset

    return [t for t in load_dataset(name, split="train")["text"] if len(t) > 200]


def encode_queries(tokenizer: PreTrainedTokenizerBase, reviews: list[str], lengths: list[int]) -> list[list[int]]:
    """Each review's first `length` tokens. A query is a few tokens, so 200 characters are plenty."""
    ids = tokenizer([r[:200] for r in reviews])["input_ids"]
    return [seq[:n] for seq, n in zip(ids, lengths, strict=True)]


def batches(n_rows: int, batch_size: int, n_steps: int, seed: int, rank: int, world: int) -> Iterator[torch.Tensor]:
    """Row indices of each PPO step: one shuffled pass over the prompts, each process its own slice."""
    if n_rows < world * batch_size:
        raise ValueError(f"{n_rows} prompts are too few for {world} x batch_size {batch_size}")
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    for step in range(n_steps):
        start = (step * world + rank) * batch_size
        yield order[start : start + batch_size]


def run_length(n_rows: int, batch_size: int, world: int, steps: int | None) -> int:
    """PPO steps: one pass over the prompts (the last incomplete batch dropped), capped by `steps` rollouts."""
    one_pass = n_rows // (world * batch_size)
    return one_pass if steps is None else min(one_pass, math.ceil(steps / batch_size))


def left_pad(seqs: list[torch.Tensor], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (B, width): every sequence right-aligned; width defaults to the longest."""
    width = max(map(len, seqs)) if width is None else width
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = seq
        mask[row, width - len(seq) :] = 1
    return ids, mask


def right_pad(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, float mask), each (B, longest): every sequence left-aligned."""
    ids, mask = left_pad([s.flip(0) for s in seqs], pad_id)
    return ids.flip(1), mask.flip(1).float()


def until_eos(responses: torch.Tensor, eos_id: int) -> list[torch.Tensor]:
    """Each generated row up to and including its first EOS (the padding after it dropped), as classic TRL.

    The EOS is kept: ending the text was the policy's action too, and every response has a token.
    """
    is_eos = (responses == eos_id).long()
    lengths = ((is_eos.cumsum(1) - is_eos) == 0).sum(1).tolist()
    return [row[:n] for row, n in zip(responses, lengths, strict=True)]


def rollout_texts(
    tokenizer: PreTrainedTokenizerBase, queries: list[torch.Tensor], responses: list[torch.Tensor]
) -> tuple[list[str], list[str]]:
    """Query and response texts as the classic script decodes them: a response's EOS stays in its text."""
    return tokenizer.batch_decode(queries), tokenizer.batch_decode(responses)


class FullSampling(LogitsProcessor):
    """Samples each next token from the whole softmax (top_k=0, top_p=1) and returns it one-hot.

    `generate` then decodes greedily, i.e. takes the sampled token. Its own sampler, torch.multinomial,
    draws an exponential variate for every vocabulary entry: two thirds of the CPU generation time at
    GPT-2's 50,257 tokens. Here one uniform number per row picks the token from the cumulative sum.
    """

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cumulative = scores.float().softmax(-1).cumsum(-1)
        uniform = torch.rand(len(scores), 1, device=scores.device) * cumulative[:, -1:]
        tokens = torch.searchsorted(cumulative, uniform).clamp_(max=scores.shape[1] - 1)
        return torch.full_like(scores, -math.inf).scatter_(1, tokens, 0.0)


def clock(device: torch.device) -> float:
    """Wall time after the device finished its queued work, so GPU timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class StepResult:
    """What one PPO step reports: scalar metrics (classic names) and the distributions behind some of them."""

    metrics: dict[str, float]
    distributions: dict[str, torch.Tensor]


class PPOTrainer:
    """Classic TRL's `PPOTrainer.step`: one PPO update from given rollouts, and the state kept between steps.

    The state: the optimiser, the KL coefficient, the running score moments and the mini-batch shuffle
    (numpy's, as classic TRL's `np.random.permutation`, seeded with this process's seed).
    """

    def __init__(
        self, cfg: PPOConfig, policy: PolicyWithValueHead, reference: torch.nn.Module | None, pad_id: int,
        seed: int, bf16: bool = False,
    ) -> None:
        self.cfg, self.policy, self.reference, self.pad_id = cfg, policy, reference, pad_id
        self.device = next(policy.parameters()).device
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.learning_rate, fused=True)  # one kernel, same math
        self.model = DistributedDataParallel(policy) if self.world > 1 else policy
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        self.kl_coef = cfg.init_kl_coef
        self.score_moments = core.RunningMoments()
        self.shuffle = np.random.RandomState(seed)

    def sync(self, i: int, n: int) -> AbstractContextManager:
        """For the i-th of n accumulated mini batches: DDP averages gradients over processes once per
        optimiser step, in the last one's backward, not in every mini batch's."""
        return self.model.no_sync() if self.world > 1 and i < n - 1 else nullcontext()

    def step(self, queries: list[torch.Tensor], responses: list[torch.Tensor], scores: torch.Tensor) -> StepResult:
        """One PPO step on rollouts: token ids of each query and response (ending at its EOS, if any), scores."""
        cfg, policy, device = self.cfg, self.policy, self.device
        t_start = clock(device)
        scores = scores.to(device, torch.float32)
        if cfg.use_score_scaling:
            self.score_moments.update(gather(scores))
            scores = self.score_moments.scale(scores, centre=cfg.use_score_norm)
        if cfg.score_clip is not None:
            scores = scores.clamp(-cfg.score_clip, cfg.score_clip)

        # Queries left-padded and responses right-padded: every response starts in the same column.
        query_ids, query_mask = left_pad(queries, self.pad_id)
        response_ids, mask = right_pad(responses, self.pad_id)
        input_ids = torch.cat([query_ids, response_ids], 1).to(device)
        attention_mask = torch.cat([query_mask, torch.ones_like(response_ids)], 1).to(device)
        response_ids, mask = response_ids.to(device), mask.to(device)

        # 1. Log-probabilities and values of the rollouts under the policy, and the reference's. Rows go in
        # the order of the first epoch's shuffle: its first mini batch needs this same forward pass (the
        # weights have not moved yet), so that one runs with gradients and is kept for the first update.
        n_rows, backward_batch = len(queries), cfg.mini_batch_size * cfg.gradient_accumulation_steps
        first_epoch = torch.from_numpy(self.shuffle.permutation(n_rows))
        logprobs, ref_logprobs, values, kl = (torch.empty(mask.shape, device=device) for _ in range(4))
        kept = None
        for rows in first_epoch.split(cfg.mini_batch_size):
            ids, attention, tokens = input_ids[rows], attention_mask[rows], response_ids[rows]
            if kept is None:
                with self.sync(0, cfg.gradient_accumulation_steps), self.autocast:
                    kept = self.model(ids, attention, tokens, with_entropy=True)
                chunk_logprobs, _, chunk_values, hidden = (x.detach() for x in kept)
            else:
                with torch.no_grad(), self.autocast:
                    chunk_logprobs, _, chunk_values, hidden = policy(ids, attention, tokens, with_entropy=False)
            with torch.no_grad(), self.autocast:
                # The policy's head is taken before reference_mode: with PEFT that turns the adapters off.
                head = output_head(policy.lm) if cfg.kl_penalty == "full" else None
                with reference_mode(policy, self.reference) as ref_lm:
                    ref_hidden = response_hidden(ref_lm, ids, attention, tokens.shape[1])
                    ref_head = output_head(ref_lm)
                    chunk_ref_logprobs, _ = core.head_logprobs(ref_hidden, *ref_head, tokens, with_entropy=False)
                if head is not None:
                    kl[rows] = core.full_kl(hidden, head, ref_hidden, ref_head)
                else:
                    kl[rows] = core.kl_penalty(chunk_logprobs, chunk_ref_logprobs, cfg.kl_penalty)
            logprobs[rows], ref_logprobs[rows], values[rows] = chunk_logprobs, chunk_ref_logprobs, chunk_values
        t_forward = clock(device)

        # 2. Per-token rewards: the KL penalty everywhere, the score on the last token.
        rewards, non_score_rewards = core.token_rewards(scores, kl, mask, self.kl_coef)
        t_rewards = clock(device)

        # 3. Advantages and returns (GAE).
        advantages, returns = core.gae(values, rewards, mask, cfg.gamma, cfg.lam, cfg.whiten_rewards)
        t_advantages = clock(device)

        # 4. PPO epochs: shuffled optimiser batches, each split into accumulated mini batches.
        train_stats = defaultdict(list)
        for epoch in range(cfg.ppo_epochs):
            order = first_epoch if epoch == 0 else torch.from_numpy(self.shuffle.permutation(n_rows))
            for batch in order.split(backward_batch):
                n_tokens = mask[batch].sum()
                micro_batches = batch.split(cfg.mini_batch_size)
                for i, mb in enumerate(micro_batches):
                    with self.sync(i, len(micro_batches)), self.autocast:
                        if kept is None:
                            kept = self.model(input_ids[mb], attention_mask[mb], response_ids[mb], with_entropy=True)
                        (new_logprobs, entropy, new_values, _), kept = kept, None
                        loss, stats = core.ppo_loss(
                            new_logprobs, new_values, logprobs[mb], values[mb], advantages[mb], returns[mb],
                            mask[mb], cfg.cliprange, cfg.cliprange_value, cfg.vf_coef, n_tokens, cfg.ratio_threshold,
                        )
                        loss.backward()
                    stats["policy/entropy"] = core.masked_mean(entropy, mask[mb])
                    for k, v in stats.items():
                        train_stats[k].append(v)
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            # Classic TRL stops at the end of an epoch, on the policy KL of its last mini batch.
            if cfg.early_stopping and gather(train_stats["policy/policykl"][-1][None]).mean() > 1.5 * cfg.target_kl:
                break
        t_optimised = clock(device)

        # 5. Statistics, averaged over processes; then the KL controller update (the coefficient logged is
        # the one this step used).
        kl_per_rollout = (kl * mask).sum(1)
        query_lengths = torch.tensor([len(q) for q in queries], dtype=torch.float)
        response_lengths = torch.tensor([len(r) for r in responses], dtype=torch.float)
        scalars = {
            "objective/kl": kl_per_rollout.mean(),
            "objective/entropy": (-logprobs * mask).sum(1).mean(),
            "ppo/mean_non_score_reward": core.masked_mean(non_score_rewards, mask),
            "ppo/mean_scores": scores.mean(),
            "ppo/std_scores": scores.std(),
            "tokens/queries_len_mean": query_lengths.mean(),
            "tokens/queries_len_std": query_lengths.std(),
            "tokens/responses_len_mean": response_lengths.mean(),
            "tokens/responses_len_std": response_lengths.std(),
            **{f"ppo/{k}": torch.stack(v).mean() for k, v in train_stats.items()},
        }
        metrics = dict(zip(scalars, torch.stack([v.to(device) for v in scalars.values()]).tolist(), strict=True))
        metrics["ppo/val/var_explained"] = 1 - metrics["ppo/val/error"] / metrics["ppo/returns/var"]
        metrics = average(metrics, device)
        metrics.update({"objective/kl_coef": self.kl_coef, "ppo/learning_rate": self.optimizer.param_groups[0]["lr"]})
        skipped = sum(r > cfg.ratio_threshold for r in torch.stack(train_stats["policy/ratio"]).tolist())
        if skipped:
            warnings.warn(f"{skipped} mini batches had a mean policy ratio above ratio_threshold "
                          f"{cfg.ratio_threshold:g}; their loss was zeroed", stacklevel=2)
        if cfg.adap_kl_ctrl:
            self.kl_coef = core.adaptive_kl_coef(
                self.kl_coef, metrics["objective/kl"], cfg.batch_size * self.world, cfg.target, cfg.horizon
            )
        t_end = clock(device)
        metrics.update({
            "time/ppo/forward_pass": t_forward - t_start,
            "time/ppo/compute_rewards": t_rewards - t_forward,
            "time/ppo/compute_advantages": t_advantages - t_rewards,
            "time/ppo/optimize_step": t_optimised - t_advantages,
            "time/ppo/calc_stats": t_end - t_optimised,
            "time/ppo/total": t_end - t_start,
        })
        mask = mask.bool()
        return StepResult(metrics, {
            "objective/kl_dist": gather(kl_per_rollout), "objective/logprobs": logprobs[mask],
            "objective/ref_logprobs": ref_logprobs[mask],
        })


def init_wandb(args: Args) -> Any:
    import wandb

    cfg = args.ppo_config
    script_args = {k: v for k, v in asdict(args).items() if k != "ppo_config"}
    # The project, group and name scheme of the classic runs; wandb reads tags from WANDB_TAGS.
    return wandb.init(
        project=cfg.tracker_project_name,
        group=cfg.exp_name,
        name=f"{cfg.exp_name}__{cfg.seed}__{int(time.time())}",
        config={"trl_ppo_trainer_config": asdict(cfg), **script_args},
    )


def train(args: Args) -> list[dict[str, float]]:
    """Run PPO; returns the scalar metrics of every step (what W&B gets, without histograms and tables)."""
    validate(args)
    cfg = args.ppo_config
    if args.seed is not None:
        cfg.seed = args.seed
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.seed + rank)

    tokenizer = load_tokenizer(cfg.model_name)
    reviews = load_reviews(cfg.query_dataset)
    # One query length per review, drawn once like the classic dataset map (TRL's LengthSampler), and
    # each review's query tokenised once.
    query_lengths = torch.randint(
        args.query_min_length, args.query_max_length, (len(reviews),), generator=torch.Generator().manual_seed(cfg.seed)
    )
    all_queries = [torch.tensor(q) for q in encode_queries(tokenizer, reviews, query_lengths.tolist())]
    policy, reference = load_policy(
        cfg.model_name, args.use_peft, args.lora_r, args.lora_alpha, device, args.lora_target_modules
    )
    reward_fn = SentimentReward(cfg.reward_model, device)
    trainer = PPOTrainer(cfg, policy, reference, tokenizer.pad_token_id, cfg.seed + rank, args.bf16)
    # The classic sampling (top_k=0, top_p=1: the whole distribution), drawn by `FullSampling`.
    generation = GenerationConfig(
        do_sample=False, max_new_tokens=args.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        # A static KV cache lets the GPU decode without reallocating every token; no gain on CPU.
        cache_implementation="static" if device.type == "cuda" else None,
    )
    run = init_wandb(args) if cfg.log_with == "wandb" and rank == 0 else None
    if run is not None:
        trainable, total = trainable_fraction(policy)
        run.summary.update({"model/trainable_params": trainable, "model/total_params": total})

    n_steps = run_length(len(reviews), cfg.batch_size, world, cfg.steps)
    history = []
    for step, rows in enumerate(batches(len(reviews), cfg.batch_size, n_steps, cfg.seed, rank, world)):
        t_start = clock(device)

        # 1. Rollout: the whole batch generates at once from left-padded queries, always padded to the
        # longest possible query, so that shapes stay the same from step to step (a static KV cache and
        # compiled kernels are reused).
        queries = [all_queries[i] for i in rows.tolist()]
        query_ids, query_mask = left_pad(queries, tokenizer.pad_token_id, args.query_max_length - 1)
        with torch.no_grad(), trainer.autocast:
            sequences = policy.lm.generate(
                input_ids=query_ids.to(device), attention_mask=query_mask.to(device), generation_config=generation,
                logits_processor=LogitsProcessorList([FullSampling()]),
            )
        responses = until_eos(sequences[:, query_ids.shape[1] :].cpu(), tokenizer.eos_token_id)
        t_generated = clock(device)

        # 2. Score query + response with the reward model.
        query_texts, response_texts = rollout_texts(tokenizer, queries, responses)
        raw_scores = reward_fn([q + r for q, r in zip(query_texts, response_texts, strict=True)])
        t_scored = clock(device)

        # 3. The PPO update.
        result = trainer.step(queries, responses, raw_scores)
        t_end = clock(device)

        all_scores = gather(raw_scores.to(device))
        total = t_end - t_start
        metrics = {
            "env/reward_mean": all_scores.mean().item(),
            "env/reward_std": all_scores.std().item(),
            **result.metrics,
            "time/generate": t_generated - t_start,
            "time/reward": t_scored - t_generated,
            "time/total": total,
            "perf/samples_per_s": len(all_scores) / total,
            "perf/tokens_per_s": world * result.metrics["tokens/responses_len_mean"] * len(responses) / total,
        }
        if device.type == "cuda":
            metrics["perf/peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        history.append(metrics)
        if rank == 0:
            print(f"step {step + 1}/{n_steps}: reward {metrics['env/reward_mean']:.3f}, "
                  f"kl {metrics['objective/kl']:.3f}, {metrics['perf/samples_per_s']:.1f} samples/s", flush=True)

        if run is not None:
            import wandb

            histograms = {"env/reward_dist": all_scores, **result.distributions}
            logged = {**metrics, **{k: wandb.Histogram(v.float().cpu().numpy()) for k, v in histograms.items()}}
            if step % args.table_every == 0:
                logged["game_log"] = wandb.Table(
                    columns=["query", "response", "reward"],
                    data=[[q, r, s] for q, r, s in zip(query_texts, response_texts, raw_scores.tolist(), strict=True)],
                )
            run.log(logged, step=step)

    if args.output_dir is not None and rank == 0:
        policy.lm.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
        torch.save(policy.v_head.state_dict(), os.path.join(args.output_dir, "value_head.pt"))
    if run is not None:
        run.finish()
    if world > 1:
        dist.destroy_process_group()
    return history


def parse(argv: list[str] | None = None) -> Args:
    """The command line as TRL's examples spelled it (`--ppo_config.mini_batch_size`, `--use_peft`).

    Classic PPOConfig flags that this implementation cannot honour are refused by name (exit 2).
    """
    for token in sys.argv[1:] if argv is None else argv:
        name = token.removeprefix("--ppo_config.").removeprefix("--ppo-config.").split("=")[0].replace("-", "_")
        if token.startswith(("--ppo_config.", "--ppo-config.")) and name in REFUSED_CLASSIC_FLAGS:
            print(f"error: {token.split('=')[0]} (a classic TRL flag) is not supported: "
                  f"{REFUSED_CLASSIC_FLAGS[name]}", file=sys.stderr)
            sys.exit(2)
    return tyro.cli(Args, args=argv, use_underscores=True)


def main() -> None:
    args = parse()
    try:
        train(args)
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
