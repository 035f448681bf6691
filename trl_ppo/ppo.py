"""PPO sentiment tuning: the classic TRL algorithm (PPOTrainer, TRL <= 0.11) in one file.

A causal LM continues IMDB review openings; the reward is the POSITIVE logit of a sentiment
classifier; a per-token KL penalty keeps the policy near a frozen reference. Read `train` top to
bottom: rollout -> rewards -> advantages -> PPO epochs -> KL controller -> logging.

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
from collections import defaultdict
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
import tyro
from torch.nn.parallel import DistributedDataParallel
from transformers import GenerationConfig, PreTrainedTokenizerBase

from trl_ppo import core
from trl_ppo.models import load_policy, load_tokenizer, reference_mode, response_logits, trainable_fraction
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
    steps: int = 20000
    """rollouts to train on in all; ceil(steps / batch_size) PPO steps, looping over the prompts"""
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
    """whiten the per-token rewards before computing advantages"""


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
        (cfg.steps > 0 and cfg.ppo_epochs > 0, "steps and ppo_epochs must be positive"),
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


def load_reviews(name: str) -> list[str]:
    """The prompts' source, as in the classic script: training reviews longer than 200 characters."""
    from datasets import load_dataset

    return [t for t in load_dataset(name, split="train")["text"] if len(t) > 200]


def encode_queries(tokenizer: PreTrainedTokenizerBase, reviews: list[str], lengths: list[int]) -> list[list[int]]:
    """Each review's first `length` tokens. A query is a few tokens, so 200 characters are plenty."""
    ids = tokenizer([r[:200] for r in reviews])["input_ids"]
    return [seq[:n] for seq, n in zip(ids, lengths, strict=True)]


def batches(n_rows: int, batch_size: int, n_steps: int, seed: int, rank: int, world: int) -> Iterator[torch.Tensor]:
    """Row indices of each PPO step: shuffled epochs over the prompts, each process its own slice."""
    if n_rows < world * batch_size:
        raise ValueError(f"{n_rows} prompts are too few for {world} x batch_size {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    step = 0
    while True:
        order = torch.randperm(n_rows, generator=generator)
        for start in range(0, n_rows - world * batch_size + 1, world * batch_size):
            if step == n_steps:
                return
            yield order[start + rank * batch_size : start + (rank + 1) * batch_size]
            step += 1


def left_pad(seqs: list[list[int]], pad_id: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def response_mask(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 on each response's tokens up to and including its first EOS, 0 on the padding after it.

    The EOS is kept: ending the text was the policy's action too, and every response has a token.
    """
    is_eos = (responses == eos_id).long()
    return ((is_eos.cumsum(1) - is_eos) == 0).float()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def clock(device: torch.device) -> float:
    """Wall time after the device finished its queued work, so GPU timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


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
    # One query length per review, drawn once like the classic dataset map (TRL's LengthSampler).
    query_lengths = torch.randint(
        args.query_min_length, args.query_max_length, (len(reviews),), generator=torch.Generator().manual_seed(cfg.seed)
    )
    policy, reference = load_policy(
        cfg.model_name, args.use_peft, args.lora_r, args.lora_alpha, device, args.lora_target_modules
    )
    reward_fn = SentimentReward(cfg.reward_model, device)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
    model = DistributedDataParallel(policy) if world > 1 else policy
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    generation = GenerationConfig(
        do_sample=True, top_k=0, top_p=1.0, max_new_tokens=args.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        # A static KV cache lets the GPU decode without reallocating every token; no gain on CPU.
        cache_implementation="static" if device.type == "cuda" else None,
    )
    run = init_wandb(args) if cfg.log_with == "wandb" and rank == 0 else None
    if run is not None:
        trainable, total = trainable_fraction(policy)
        run.summary.update({"model/trainable_params": trainable, "model/total_params": total})

    kl_coef = cfg.init_kl_coef
    n_steps = math.ceil(cfg.steps / cfg.batch_size)
    shuffle = torch.Generator().manual_seed(cfg.seed + rank)
    history = []
    for step, rows in enumerate(batches(len(reviews), cfg.batch_size, n_steps, cfg.seed, rank, world)):
        t_start = clock(device)

        # 1. Rollout: the whole batch generates at once from left-padded queries.
        queries = encode_queries(tokenizer, [reviews[i] for i in rows.tolist()], query_lengths[rows].tolist())
        # Always the longest possible query's width: shapes stay the same from step to step, which a
        # static KV cache and compiled kernels need to be reused.
        query_ids, query_mask = left_pad(queries, tokenizer.pad_token_id, args.query_max_length - 1)
        query_ids, query_mask = query_ids.to(device), query_mask.to(device)
        with torch.no_grad(), autocast:
            sequences = policy.lm.generate(
                input_ids=query_ids, attention_mask=query_mask, generation_config=generation
            )
        responses = sequences[:, query_ids.shape[1] :]
        mask = response_mask(responses, tokenizer.eos_token_id)
        input_ids = torch.cat([query_ids, responses], 1)
        attention_mask = torch.cat([query_mask, torch.ones_like(responses)], 1)
        n = responses.shape[1]
        t_generated = clock(device)

        # 2. Score query + response with the reward model.
        query_texts = tokenizer.batch_decode(query_ids, skip_special_tokens=True)
        # Generation pads finished responses with special tokens, which decoding drops.
        response_texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = reward_fn([q + r for q, r in zip(query_texts, response_texts, strict=True)]).to(device)
        t_scored = clock(device)

        # 3. Log-probabilities and values of the rollout under the policy, and the reference's.
        logprobs, ref_logprobs, values, kl = [], [], [], []
        with torch.no_grad(), autocast:
            for chunk in torch.arange(len(rows)).split(cfg.mini_batch_size):
                logits, chunk_values = policy(input_ids[chunk], attention_mask[chunk], n)
                with reference_mode(policy, reference) as ref_lm:
                    ref_logits, _ = response_logits(ref_lm, input_ids[chunk], attention_mask[chunk], n)
                tokens = responses[chunk]
                logprobs.append(token_logprobs(logits, tokens))
                ref_logprobs.append(token_logprobs(ref_logits, tokens))
                values.append(chunk_values.float())
                if cfg.kl_penalty == "full":
                    kl.append(core.kl_penalty(logits.log_softmax(-1), ref_logits.log_softmax(-1), "full"))
                else:
                    kl.append(core.kl_penalty(logprobs[-1], ref_logprobs[-1], cfg.kl_penalty))
        logprobs, ref_logprobs, values, kl = (torch.cat(x) for x in (logprobs, ref_logprobs, values, kl))
        t_forward = clock(device)

        # 4. Per-token rewards: the KL penalty everywhere, the score on the last token.
        rewards, non_score_rewards = core.token_rewards(scores, kl, mask, kl_coef)
        t_rewards = clock(device)

        # 5. Advantages and returns (GAE).
        advantages, returns = core.gae(values, rewards, mask, cfg.gamma, cfg.lam, cfg.whiten_rewards)
        t_advantages = clock(device)

        # 6. PPO epochs: shuffled optimiser batches, each split into accumulated mini batches.
        train_stats = defaultdict(list)
        backward_batch = cfg.mini_batch_size * cfg.gradient_accumulation_steps
        stop = False
        for _ in range(cfg.ppo_epochs):
            for batch in torch.randperm(len(rows), generator=shuffle).split(backward_batch):
                n_tokens = mask[batch].sum()
                micro_batches = batch.split(cfg.mini_batch_size)
                for i, mb in enumerate(micro_batches):
                    # DDP averages gradients over processes once per optimiser step, not per mini batch.
                    sync = world == 1 or i == len(micro_batches) - 1
                    with model.no_sync() if not sync else nullcontext(), autocast:
                        logits, new_values = model(input_ids[mb], attention_mask[mb], n)
                        new_logprobs = token_logprobs(logits, responses[mb])
                        loss, stats = core.ppo_loss(
                            new_logprobs, new_values.float(), logprobs[mb], values[mb], advantages[mb],
                            returns[mb], mask[mb], cfg.cliprange, cfg.cliprange_value, cfg.vf_coef, n_tokens,
                        )
                        loss.backward()
                    stats["policy/entropy"] = core.masked_mean(core.entropy_from_logits(logits.detach()), mask[mb])
                    for k, v in stats.items():
                        train_stats[k].append(v)
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                policy_kl = torch.stack(train_stats["policy/policykl"][-len(micro_batches) :]).mean()
                if cfg.early_stopping and gather(policy_kl[None]).mean() > 1.5 * cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        t_optimised = clock(device)

        # 7. Statistics, then the KL controller update (the coefficient logged is the one used).
        all_scores = gather(scores)
        kl_per_rollout = gather(((logprobs - ref_logprobs) * mask).sum(1))
        mean_kl = kl_per_rollout.mean().item()
        response_lengths = mask.sum(1)
        metrics = {
            "env/reward_mean": all_scores.mean().item(),
            "env/reward_std": all_scores.std().item(),
            "objective/kl": mean_kl,
            "objective/kl_coef": kl_coef,
            "objective/entropy": (-logprobs * mask).sum(1).mean().item(),
            "ppo/mean_scores": scores.mean().item(),
            "ppo/std_scores": scores.std().item(),
            "ppo/mean_non_score_reward": non_score_rewards.sum(1).mean().item(),
            "ppo/learning_rate": optimizer.param_groups[0]["lr"],
            "tokens/queries_len_mean": query_mask.sum(1).float().mean().item(),
            "tokens/queries_len_std": query_mask.sum(1).float().std().item(),
            "tokens/responses_len_mean": response_lengths.mean().item(),
            "tokens/responses_len_std": response_lengths.std().item(),
        }
        metrics.update({f"ppo/{k}": torch.stack(v).mean().item() for k, v in train_stats.items()})
        metrics["ppo/val/var_explained"] = 1 - metrics["ppo/val/error"] / metrics["ppo/returns/var"]
        if cfg.adap_kl_ctrl:
            kl_coef = core.adaptive_kl_coef(kl_coef, mean_kl, cfg.batch_size * world, cfg.target, cfg.horizon)
        t_end = clock(device)

        total = t_end - t_start
        metrics.update({
            "time/generate": t_generated - t_start,
            "time/reward": t_scored - t_generated,
            "time/ppo/forward_pass": t_forward - t_scored,
            "time/ppo/compute_rewards": t_rewards - t_forward,
            "time/ppo/compute_advantages": t_advantages - t_rewards,
            "time/ppo/optimize_step": t_optimised - t_advantages,
            "time/ppo/calc_stats": t_end - t_optimised,
            "time/ppo/total": total,
            "perf/samples_per_s": len(all_scores) / total,
            "perf/tokens_per_s": gather(response_lengths).sum().item() / total,
        })
        if device.type == "cuda":
            metrics["perf/peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        history.append(metrics)
        if rank == 0:
            print(f"step {step + 1}/{n_steps}: reward {metrics['env/reward_mean']:.3f}, kl {mean_kl:.3f}, "
                  f"{metrics['perf/samples_per_s']:.1f} samples/s", flush=True)

        if run is not None:
            import wandb

            histograms = {
                "env/reward_dist": all_scores, "objective/kl_dist": kl_per_rollout,
                "objective/logprobs": logprobs[mask.bool()], "objective/ref_logprobs": ref_logprobs[mask.bool()],
            }
            logged = {**metrics, **{k: wandb.Histogram(v.float().cpu().numpy()) for k, v in histograms.items()}}
            if step % args.table_every == 0:
                logged["game_log"] = wandb.Table(
                    columns=["query", "response", "reward"],
                    data=[[q, r, s] for q, r, s in zip(query_texts, response_texts, scores.tolist(), strict=True)],
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
    """The command line as TRL's examples spelled it (`--ppo_config.mini_batch_size`, `--use_peft`)."""
    return tyro.cli(Args, args=argv, use_underscores=True)


def main() -> None:
    args = parse()
    try:
        train(args)
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
