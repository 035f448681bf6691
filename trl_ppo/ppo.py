"""PPO sentiment tuning: the classic TRL algorithm (PPOTrainer, TRL <= 0.11) in one file.

A causal LM continues IMDB review openings; the reward is the POSITIVE logit of a sentiment
classifier; a per-token KL penalty keeps the policy near a frozen reference. Read `train` top to
bottom: rollout -> reward -> `PPOTrainer.step` (forward pass -> rewards -> advantages -> PPO epochs ->
statistics -> KL controller) -> logging. `PPOTrainer.step` takes the same inputs as classic TRL's
`PPOTrainer.step(queries, responses, scores)` and computes the same numbers (tests/ppo/test_parity.py).
`PPOTrainer` is classic TRL's whole public trainer (its constructor, `dataloader`, `generate`, `step`,
`log_stats`, `save_pretrained`), so classic code runs with `trl` replaced by `trl_ppo` in its imports;
`train` below is written against it.

    python -m trl_ppo.ppo --ppo_config.log_with wandb      # or examples/scripts/ppo.py, the seed's script
    python -m trl_ppo.ppo --ppo_config.model_name DIR/gpt2-imdb \\
        --ppo_config.reward_model sentiment-analysis:DIR/distilbert-imdb --query_dataset DIR/imdb

(DIR from `python -m trl_ppo.offline_assets DIR`.) `--task control` trains sentiment control instead, as the
gpt2-control notebook: each query starts with `[negative]`, `[neutral]` or `[positive]`, and the reward pays for
that sentiment. The flags are the classic script's `ScriptArguments`
(`ppo_config`, `query_dataset`, `use_peft`, `peft_config`, `trust_remote_code`; `use_seq2seq` is refused).
Under `accelerate launch` or `torchrun` every process trains on its own device and its own `batch_size`
rollouts; gradients are averaged (DDP).

The flags and PPOConfig live in trl_ppo/config.py, which imports no torch: run as a script, this file parses
the command line first, above its own imports (seconds of torch, transformers, peft and accelerate), so that
`--help` and a refused flag answer in a fraction of a second; the loop stays here, in one file.
"""

from trl_ppo.config import REFUSED_SCRIPT_FLAGS, Args, ConfigError, PPOConfig, config_errors, parse, require_workload

if __name__ == "__main__":
    # Run as a script: read the command line before the imports below, which take seconds, so that --help and a
    # refused flag answer at once. main(ARGS) at the end trains.
    ARGS = parse()
    require_workload()

import math
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator
from peft import LoraConfig
from torch.nn.parallel import DistributedDataParallel
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

from trl_ppo import core
from trl_ppo.core import set_seed
from trl_ppo.models import (
    AutoModelForCausalLMWithValueHead,
    create_reference_model,
    load_tokenizer,
    output_head,
    reference_mode,
    response_hidden,
    trainable_fraction,
)
from trl_ppo.rewards import CONTROL_TOKENS, SentimentReward, control_rewards, parse_reward_model


def validate(args: Args) -> None:
    checks = [
        (1 <= args.query_min_length < args.query_max_length,
         "need 1 <= query_min_length < query_max_length (the upper end is exclusive)"),
        (args.max_new_tokens > 0, "max_new_tokens must be positive"),
        (not args.use_peft or (args.peft_config.r > 0 and args.peft_config.lora_alpha > 0),
         "peft_config.r and peft_config.lora_alpha must be positive"),
        (not args.use_seq2seq, f"use_seq2seq: {REFUSED_SCRIPT_FLAGS['use_seq2seq']}"),
        (args.table_every > 0, "table_every must be positive"),
    ]
    errors = config_errors(args.ppo_config) + [message for ok, message in checks if not ok]
    try:
        parse_reward_model(args.ppo_config.reward_model)
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


# Settings that reshape or redirect sampling, with the values (transformers' defaults) that leave it alone.
NEUTRAL_SAMPLING = {
    "temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0, "min_p": None, "top_h": None,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "num_beams": 1, "num_return_sequences": 1, "watermarking_config": None,
    "output_scores": False, "output_logits": False, "return_dict_in_generate": False,
}


def with_full_sampling(defaults: GenerationConfig, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`generate` keywords that draw plain sampling from the whole softmax (classic TRL's do_sample with top_k 0
    and top_p 1) by `FullSampling`: the same distribution for a third of the cost. Other keywords come back as
    they are. `defaults` is the model's generation config, which fills in what the keywords leave unset."""
    sources = [kwargs, (kwargs.get("generation_config") or GenerationConfig()).to_dict(), defaults.to_dict()]

    def setting(name: str) -> Any:
        return next((s[name] for s in sources if s.get(name) is not None), NEUTRAL_SAMPLING.get(name))

    neutral = {**NEUTRAL_SAMPLING, "top_k": 0}  # top_k unset means 50 in transformers
    if not setting("do_sample") or "assistant_model" in kwargs or any(
        setting(name) != value for name, value in neutral.items()
    ):
        return kwargs
    fast = {k: v for k, v in kwargs.items() if k not in ("do_sample", "top_k", "top_p", "temperature")}
    return {**fast, "do_sample": False, "logits_processor": LogitsProcessorList(
        [*kwargs.get("logits_processor", []), FullSampling()])}


def duration(seconds: float) -> str:
    """45s, 3m12s or 2h05m: short enough for every step's line."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def clock(device: torch.device) -> float:
    """Wall time after the device finished its queued work, so GPU timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# The dataset columns classic TRL's dataloader keeps: its model's forward arguments and what the logs show.
DATASET_COLUMNS = ("input_ids", "attention_mask", "label", "query", "response")


class PPOTrainer:
    """Classic TRL's PPOTrainer (0.11): `generate` rollouts, `step` (one PPO update on them), `log_stats`.

    Built as classic TRL's: the policy with its value head, a reference (by default a frozen copy of the
    policy, or with PEFT the policy with its adapters off), a tokenizer, and optionally a dataset that
    `dataloader` serves in batches of `config.batch_size` through `data_collator`. The constructor seeds
    every generator with `config.seed` (+ the process's rank) and moves the models to `accelerator.device`;
    `bf16` (not classic) runs generation and forward passes under bfloat16 autocast.

    The state kept between steps: the optimiser (Adam unless given), the KL coefficient, the running score
    moments and the mini-batch shuffle (numpy's, as classic TRL's `np.random.permutation`).
    """

    def __init__(
        self,
        config: PPOConfig,
        model: AutoModelForCausalLMWithValueHead,
        ref_model: AutoModelForCausalLMWithValueHead | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        dataset: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        data_collator: Callable | None = None,
        num_shared_layers: int | None = None,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        *,
        bf16: bool = False,
        logging_dir: str | None = None,
    ) -> None:
        if errors := config_errors(config):
            raise ConfigError("; ".join(errors))
        if not isinstance(model, AutoModelForCausalLMWithValueHead):
            raise TypeError(f"model must be an AutoModelForCausalLMWithValueHead, got {type(model).__name__}")
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
        self.config, self.tokenizer, self.policy = config, tokenizer, model
        # Under `accelerate launch` the Accelerator starts the process group; under our own launch it finds it.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        set_seed(config.seed + self.rank)
        self.device = self.current_device = self.accelerator.device
        self.place(model)
        self.is_peft_model = model.is_peft_model
        if ref_model is not None:
            if num_shared_layers is not None:
                warnings.warn("num_shared_layers is ignored when a ref_model is given", UserWarning, stacklevel=2)
            self.ref_model = self.place(ref_model)
        else:
            # PEFT: the reference is the policy with its adapters off (see reference_mode).
            self.ref_model = None if self.is_peft_model else create_reference_model(model, num_shared_layers)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # The fused Adam: one kernel, the same arithmetic.
        self.optimizer = optimizer or torch.optim.Adam(self.params, lr=config.learning_rate, fused=True)
        self.lr_scheduler = lr_scheduler
        self.model = DistributedDataParallel(model) if self.world > 1 else model
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.kl_coef = config.init_kl_coef
        self.score_moments = core.RunningMoments()
        self.shuffle = np.random.RandomState(config.seed + self.rank)
        self.dataset = dataset
        self.dataloader = None if dataset is None else self.prepare_dataloader(dataset, data_collator)
        self.logging_dir, self.logged_steps = logging_dir, 0
        self.run = self.init_tracker()

    def place(self, model: AutoModelForCausalLMWithValueHead) -> AutoModelForCausalLMWithValueHead:
        """The model on this process's device (unless a device_map placed it), in eval mode (no dropout)."""
        if getattr(model.lm, "hf_device_map", None) is None:
            model.to(self.device)
        return model.eval()

    def prepare_dataloader(self, dataset: Any, data_collator: Callable | None = None) -> torch.utils.data.DataLoader:
        """Shuffled batches of `config.batch_size`, the last incomplete one dropped, split over the processes;
        a `datasets.Dataset` keeps only DATASET_COLUMNS (unless `config.remove_unused_columns` is off)."""
        from datasets import Dataset

        if isinstance(dataset, Dataset) and self.config.remove_unused_columns:
            dataset = dataset.remove_columns([c for c in dataset.column_names if c not in DATASET_COLUMNS])
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.config.batch_size, collate_fn=data_collator, shuffle=True, drop_last=True
        )
        return self.accelerator.prepare_data_loader(loader)

    def init_tracker(self) -> Any:
        """What `log_stats` writes to, on the main process. With log_with wandb the W&B run: the caller's own
        run if one is open (the classic notebook opens one), else a new one in `config.tracker_project_name`.
        With log_with tensorboard a SummaryWriter in `logging_dir` (./runs unless given) / the run's name."""
        if self.config.log_with not in ("wandb", "tensorboard") or self.rank != 0:
            return None
        if self.config.log_with == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            name = f"{self.config.exp_name}__{self.config.seed}__{int(time.time())}"
            return SummaryWriter(os.path.join(self.logging_dir or "runs", name))
        import wandb

        config = {"trl_ppo_trainer_config": asdict(self.config)}
        if wandb.run is not None:
            wandb.run.config.update(config, allow_val_change=True)
            return wandb.run
        return wandb.init(project=self.config.tracker_project_name, config=config)

    def sync(self, i: int, n: int) -> AbstractContextManager:
        """For the i-th of n accumulated mini batches: DDP averages gradients over processes once per
        optimiser step, in the last one's backward, not in every mini batch's."""
        return self.model.no_sync() if self.world > 1 and i < n - 1 else nullcontext()

    def generate(
        self,
        query_tensor: torch.Tensor | list[torch.Tensor],
        length_sampler: Callable[[], int] | None = None,
        batch_size: int = 4,
        return_prompt: bool = True,
        generate_ref_response: bool = False,
        **generation_kwargs: Any,
    ) -> Any:
        """The policy's responses to one query (a 1-D tensor: a (1, length) tensor back) or to a list of queries
        (a list of 1-D tensors back, generated `batch_size` at a time, each without padding and ending at its
        first EOS), prompts included unless `return_prompt` is False, as classic TRL. `length_sampler` draws
        max_new_tokens (per batch for a list). `generate_ref_response`: (responses, the reference's responses).
        """
        if not isinstance(query_tensor, list) and query_tensor.dim() != 1:
            raise ValueError("query_tensor must be a 1-D tensor or a list of 1-D tensors")
        outputs = []
        for reference in [False, True][: 1 + generate_ref_response]:
            if isinstance(query_tensor, list):
                outputs.append(self.generate_batched(
                    reference, query_tensor, length_sampler, batch_size, return_prompt, generation_kwargs
                ))
                continue
            if length_sampler is not None and not reference:  # classic TRL draws one length for both
                generation_kwargs["max_new_tokens"] = length_sampler()
            ids = query_tensor[None]
            sequences = self.generate_padded(reference, ids, torch.ones_like(ids), generation_kwargs)
            outputs.append(sequences if return_prompt else sequences[:, len(query_tensor) :])
        return tuple(outputs) if generate_ref_response else outputs[0]

    def generate_batched(
        self,
        reference: bool,
        queries: list[torch.Tensor],
        length_sampler: Callable[[], int] | None,
        batch_size: int,
        return_prompt: bool,
        generation_kwargs: dict[str, Any],
    ) -> list[torch.Tensor]:
        """Responses to a list of queries, `batch_size` at a time, from left-padded queries.

        A response ends at its first EOS (kept): what follows is padding. Classic TRL looks for that EOS in
        the prompt too when it returns it; here only the generated tokens are searched.
        """
        outputs = []
        for start in range(0, len(queries), batch_size):
            if length_sampler is not None:
                generation_kwargs["max_new_tokens"] = length_sampler()
            batch = queries[start : start + batch_size]
            ids, mask = left_pad(batch, self.pad_id)
            sequences = self.generate_padded(reference, ids, mask, generation_kwargs)
            responses = until_eos(sequences[:, ids.shape[1] :], self.tokenizer.eos_token_id)
            outputs += [torch.cat([q.to(r.device), r]) if return_prompt else r
                        for q, r in zip(batch, responses, strict=True)]
        return outputs

    def generate_padded(
        self, reference: bool, ids: torch.Tensor, mask: torch.Tensor, generation_kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """The policy's (or the reference's) `generate` on left-padded queries: (B, width + new tokens)."""
        lm = reference_mode(self.policy, self.ref_model) if reference else nullcontext(self.policy.lm)
        with torch.no_grad(), self.autocast, lm as lm:
            kwargs = with_full_sampling(lm.generation_config, generation_kwargs)
            return lm.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)

    def step(
        self,
        queries: list[torch.Tensor],
        responses: list[torch.Tensor],
        scores: list[torch.Tensor] | torch.Tensor,
    ) -> dict[str, Any]:
        """One PPO step on `config.batch_size` rollouts: token ids of each query and response (ending at its EOS,
        if any), and a score for each (0-d tensors, or one 1-D tensor).

        Returns classic TRL's statistics under its names: scalars as floats, and as numpy arrays the
        distributions `objective/kl_dist`, `objective/logprobs`, `objective/ref_logprobs` (over response
        tokens), `tokens/queries_dist`, `tokens/responses_dist` and `ppo/policy/advantages`. Unlike classic
        TRL, `ppo/policy/ratio` is the mean ratio, not every token's.
        """
        cfg, policy = self.config, self.policy
        if not len(queries) == len(responses) == len(scores) == cfg.batch_size:
            raise ValueError(f"batch_size is {cfg.batch_size}: got {len(queries)} queries, {len(responses)} "
                             f"responses and {len(scores)} scores")
        scores = as_scores(scores)
        device = self.device
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
                with reference_mode(policy, self.ref_model) as ref_lm:
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
        mask = mask.bool()
        distributions = {
            "objective/kl_dist": gather(kl_per_rollout), "objective/logprobs": logprobs[mask],
            "objective/ref_logprobs": ref_logprobs[mask], "tokens/queries_dist": query_lengths,
            "tokens/responses_dist": response_lengths, "ppo/policy/advantages": advantages[mask],
        }
        stats = {**metrics, **{k: v.float().cpu().numpy() for k, v in distributions.items()}}
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        t_end = clock(device)
        return {
            **stats,
            "time/ppo/forward_pass": t_forward - t_start,
            "time/ppo/compute_rewards": t_rewards - t_forward,
            "time/ppo/compute_advantages": t_advantages - t_rewards,
            "time/ppo/optimize_step": t_optimised - t_advantages,
            "time/ppo/calc_stats": t_end - t_optimised,
            "time/ppo/total": t_end - t_start,
        }

    def log_stats(
        self,
        stats: dict[str, Any],
        batch: dict[str, Any],
        rewards: list[torch.Tensor] | torch.Tensor,
        columns_to_log: Iterable[str] = ("query", "response"),
    ) -> None:
        """Logs a step's statistics with `env/reward_mean`, `env/reward_std` and `env/reward_dist` (over every
        process's rewards) and, with log_with wandb, the game log: a table of the batch's `columns_to_log` and
        each reward. With log_with none nothing is logged. Every process must call it (it gathers)."""
        rewards = gather(as_scores(rewards).to(self.device, torch.float32)).cpu()
        columns_to_log = list(columns_to_log)
        table = None
        if self.config.log_with == "wandb" and ("query" in batch or "response" in batch):
            if missing := [c for c in columns_to_log if c not in batch]:
                raise ValueError(f"columns to log {missing} are not in the batch (its keys: {list(batch)})")
            table = [gather_objects(list(batch[c])) for c in columns_to_log]
        if self.rank != 0:
            return
        if "query" not in batch and "response" not in batch:
            warnings.warn("no game log: the batch has neither 'query' nor 'response'", stacklevel=2)
        logs = {**stats, "env/reward_mean": rewards.mean().item(), "env/reward_std": rewards.std().item(),
                "env/reward_dist": rewards.numpy()}
        if self.config.log_with == "tensorboard" and self.run is not None:
            log_tensorboard(self.run, logs, self.logged_steps)
        elif self.run is not None:
            import wandb

            if table is not None:
                rows = [list(row) for row in zip(*table, rewards.tolist(), strict=True)]
                logs["game_log"] = wandb.Table(columns=[*columns_to_log, "reward"], data=rows)
            self.run.log(for_wandb(logs))
        self.logged_steps += 1

    def save_pretrained(self, save_directory: str) -> None:
        """The policy with its value head (or its adapters and value head) and the tokenizer, from the main
        process."""
        if self.rank == 0:
            self.policy.save_pretrained(save_directory)
            self.tokenizer.save_pretrained(save_directory)


def as_scores(scores: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """One 1-D tensor of scores from a list of single numbers (0-d tensors, as classic TRL takes them) or itself."""
    if isinstance(scores, torch.Tensor):
        return scores.flatten()
    if any(torch.as_tensor(s).numel() != 1 for s in scores):
        raise ValueError("each score must be a single number (a 0-d tensor)")
    return torch.stack([torch.as_tensor(s).reshape(()) for s in scores])


def gather_objects(items: list[Any]) -> list[Any]:
    """Every process's items, in rank order (the items themselves when there is one process)."""
    if not dist.is_initialized():
        return items
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def for_wandb(logs: dict[str, Any]) -> dict[str, Any]:
    """Arrays and tensors of several numbers as W&B histograms, single numbers as floats; the rest as it is."""
    import wandb

    converted = {}
    for key, value in logs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu().numpy()
        if isinstance(value, np.ndarray):
            value = float(value) if value.size == 1 else wandb.Histogram(value.astype(np.float32))
        converted[key] = value
    return converted


def log_tensorboard(writer: Any, logs: dict[str, Any], step: int) -> None:
    """Scalars under their classic names, arrays and tensors of several numbers as histograms; tables skipped."""
    for key, value in logs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu().numpy()
        if isinstance(value, np.ndarray) and value.size != 1:
            if value.size:
                writer.add_histogram(key, value.astype(np.float32), step)
        elif isinstance(value, (int, float, np.ndarray, np.floating)):
            writer.add_scalar(key, float(value), step)
    writer.flush()


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


def load_policy(
    args: Args, device: torch.device
) -> tuple[AutoModelForCausalLMWithValueHead, AutoModelForCausalLMWithValueHead | None]:
    """As the classic script: the policy with a value head (`--trust_remote_code` passed to its from_pretrained),
    and the reference: with --use_peft none (the policy with its LoRA adapters off), else a frozen copy."""
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(
        args.ppo_config.model_name, peft_config=LoraConfig(**asdict(args.peft_config)) if args.use_peft else None,
        dtype=torch.float32, trust_remote_code=args.trust_remote_code,
    ).to(device)
    return policy, None if args.use_peft else create_reference_model(policy)


def train(args: Args) -> list[dict[str, float]]:
    """Run PPO; returns the scalar metrics of every step (what W&B gets, without histograms and tables)."""
    validate(args)
    cfg = args.ppo_config
    if args.seed is not None:
        cfg.seed = args.seed
    rank, world, device = setup_distributed()
    set_seed(cfg.seed + rank)  # for the value head's first weights; PPOTrainer seeds again, as classic TRL's

    tokenizer = load_tokenizer(cfg.model_name)
    reviews = load_reviews(cfg.query_dataset)
    # One query length per review, drawn once like the classic dataset map (TRL's LengthSampler), and
    # each review's query tokenised once.
    query_lengths = torch.randint(
        args.query_min_length, args.query_max_length, (len(reviews),), generator=torch.Generator().manual_seed(cfg.seed)
    )
    all_queries = [torch.tensor(q) for q in encode_queries(tokenizer, reviews, query_lengths.tolist())]
    policy, reference = load_policy(args, device)
    reward_fn = SentimentReward(cfg.reward_model, device)
    run = init_wandb(args) if cfg.log_with == "wandb" and rank == 0 else None
    if run is not None:
        trainable, total = trainable_fraction(policy)
        run.summary.update({"model/trainable_params": trainable, "model/total_params": total})
    trainer = PPOTrainer(cfg, policy, reference, tokenizer, bf16=args.bf16, logging_dir=args.output_dir)
    writer = trainer.run if cfg.log_with == "tensorboard" else None
    # The classic sampling: the whole distribution (top_k=0, top_p=1).
    generation = dict(
        do_sample=True, top_k=0, top_p=1.0, max_new_tokens=args.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        # A static KV cache lets the GPU decode without reallocating every token; no gain on CPU.
        cache_implementation="static" if device.type == "cuda" else None,
    )

    # Sentiment control: the control tokens' ids, and each process's own draw of a task per rollout.
    control_ids = [torch.tensor(tokenizer(t)["input_ids"]) for t in CONTROL_TOKENS]
    task_rng = np.random.default_rng([cfg.seed, rank])

    n_steps = run_length(len(reviews), cfg.batch_size, world, cfg.steps)
    history = []
    samples_so_far = tokens_so_far = 0  # over every process: the x-axes of a report besides the step
    t_train = time.perf_counter()
    for step, rows in enumerate(batches(len(reviews), cfg.batch_size, n_steps, cfg.seed, rank, world)):
        t_start = clock(device)

        # 1. Rollout: the whole batch generates at once, from left-padded queries (with control: each review's
        # opening after a random control token).
        queries = [all_queries[i] for i in rows.tolist()]
        prompts = queries
        if args.task == "control":
            tasks = torch.from_numpy(task_rng.integers(len(CONTROL_TOKENS), size=len(queries)))
            prompts = [torch.cat((control_ids[t], q)) for t, q in zip(tasks.tolist(), queries, strict=True)]
        responses = trainer.generate(prompts, batch_size=len(prompts), return_prompt=False, **generation)
        t_generated = clock(device)

        # 2. Score the review's opening + response with the reward model (the classifier never sees the control
        # token); with control, shape the score by the sentiment asked for.
        query_texts, response_texts = rollout_texts(tokenizer, queries, responses)
        raw_scores = reward_fn([q + r for q, r in zip(query_texts, response_texts, strict=True)])
        if args.task == "control":
            raw_scores = control_rewards(raw_scores, tasks)
            query_texts = tokenizer.batch_decode(prompts)
        t_scored = clock(device)

        # 3. The PPO update.
        stats = trainer.step(prompts, responses, raw_scores)
        t_end = clock(device)

        all_scores = gather(raw_scores.to(device))
        total = t_end - t_start
        samples_so_far += len(all_scores)
        tokens_so_far += int(gather(torch.tensor([sum(len(r) for r in responses)], device=device)).sum())
        metrics = {
            "env/reward_mean": all_scores.mean().item(),
            "env/reward_std": all_scores.std().item(),
            **{k: v for k, v in stats.items() if isinstance(v, float)},
            "time/generate": t_generated - t_start,
            "time/reward": t_scored - t_generated,
            "time/total": total,
            "perf/samples_per_s": len(all_scores) / total,
            "perf/tokens_per_s": world * stats["tokens/responses_len_mean"] * len(responses) / total,
            "counters/samples": samples_so_far,
            "counters/tokens": tokens_so_far,
        }
        if args.task == "control":
            all_tasks = gather(tasks.to(device))
            for i, token in enumerate(CONTROL_TOKENS):
                mean = all_scores[all_tasks == i].mean().item()  # nan when no rollout asked for this one
                metrics[f"env/reward_mean/{token.strip('[]')}"] = mean
        if device.type == "cuda":
            metrics["perf/peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        history.append(metrics)
        if rank == 0:
            per_token = "".join(f" ({k.rsplit('/', 1)[1]} {v:.3f})" for k, v in metrics.items()
                                if k.startswith("env/reward_mean/"))
            elapsed = t_end - t_train
            eta = elapsed / (step + 1) * (n_steps - step - 1)  # the steps left at the mean pace so far
            print(f"step {step + 1}/{n_steps}: reward {metrics['env/reward_mean']:.3f}{per_token}, "
                  f"kl {metrics['objective/kl']:.3f}, {metrics['perf/samples_per_s']:.1f} samples/s, "
                  f"{duration(elapsed)} elapsed, eta {duration(eta)}", flush=True)

        if run is not None:
            import wandb

            distributions = {k: v for k, v in stats.items() if isinstance(v, np.ndarray)}
            logged = for_wandb({**metrics, "env/reward_dist": all_scores, **distributions})
            if step % args.table_every == 0:
                logged["game_log"] = wandb.Table(
                    columns=["query", "response", "reward"],
                    data=[[q, r, s] for q, r, s in zip(query_texts, response_texts, raw_scores.tolist(), strict=True)],
                )
            run.log(logged, step=step)
        if writer is not None:
            distributions = {k: v for k, v in stats.items() if isinstance(v, np.ndarray)}
            log_tensorboard(writer, {**metrics, "env/reward_dist": all_scores, **distributions}, step)

    if args.output_dir is not None:
        trainer.save_pretrained(args.output_dir)
    if run is not None:
        run.finish()
    if writer is not None:
        writer.close()
    if world > 1:
        dist.destroy_process_group()
    return history


def main(args: Args) -> None:
    try:
        train(args)
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main(ARGS)
