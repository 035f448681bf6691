"""PPO step throughput: trl_ppo against classic TRL 0.11.4's PPOTrainer, same settings, same run.

    pip install -e ".[offline,bench]"
    python bench/ppo_throughput.py                    # CPU: a small GPT-2 (2 x 128, full vocabulary)
    python bench/ppo_throughput.py --preset gpt2      # GPU: gpt2 (124M), batch 128, 32 new tokens
    python bench/ppo_throughput.py --preset gpt2-xl   # GPU: gpt2-xl (1.5B), mini batch 16 x accumulation 8

Both sides get random-init models of the preset's shape (speed does not depend on the weights), the
real GPT-2 tokenizer, IMDB review openings as queries, a reward model of DistilBERT shape, 4 PPO
epochs and no logging. Each implementation runs in its own process so that peak memory is its own.
TRL runs as the classic example did (fp32, generation 4 queries at a time, the reward pipeline at
batch 16); ours runs as shipped (whole-batch generation, one reward call; on a GPU a static KV cache),
once in fp32 (`ours`) and once under bf16 autocast (`ours-bf16`). Prints samples/s, tokens/s, the time
split (generate / reward / PPO forward pass / PPO update / the whole step), peak memory, the ratios.
"""

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

PRESETS = {
    # name: (policy GPT2Config kwargs, reward DistilBertConfig kwargs, batch, mini batch, accumulation, new tokens)
    "cpu-small": (dict(n_embd=128, n_layer=2, n_head=4), dict(dim=64, n_layers=1, n_heads=2, hidden_dim=256),
                  32, 32, 1, 16),
    "gpt2": (dict(), dict(), 128, 128, 1, 32),
    "gpt2-xl": (dict(n_embd=1600, n_layer=48, n_head=25), dict(), 128, 16, 8, 32),
}


@dataclass
class Args:
    preset: Literal["cpu-small", "gpt2", "gpt2-xl"] | None = None
    """model shapes and batch settings; default gpt2 on a GPU, cpu-small otherwise"""
    steps: int = 3
    """PPO steps timed per implementation"""
    warmup: int = 1
    """PPO steps run first and not timed (allocations, kernel selection)"""
    impls: tuple[Literal["ours", "ours-bf16", "trl"], ...] = ("ours", "ours-bf16", "trl")
    """implementations to measure"""
    threads: int | None = None
    """torch CPU threads in each measured process (default: torch's own choice)"""
    work_dir: Path | None = None
    """where the random-init models are written (default: a temporary folder)"""
    measure: Literal["ours", "ours-bf16", "trl"] | None = None
    """internal: measure this implementation in this process and print one JSON line"""


def build_assets(preset: str, folder: Path) -> None:
    """Random-init policy and reward model of the preset's shapes, the GPT-2 tokenizer, IMDB prompts."""
    from datasets import Dataset, DatasetDict
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    from trl_ppo.offline_assets import gpt2_tokenizer, load_imdb_reviews

    policy_shape, reward_shape, *_ = PRESETS[preset]
    tokenizer = gpt2_tokenizer(folder / "policy")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), **policy_shape)).save_pretrained(folder / "policy")
    reward = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.eos_token_id,
        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1}, **reward_shape,
    ))
    reward.save_pretrained(folder / "reward")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(folder / "reward")
    texts, labels = load_imdb_reviews()
    DatasetDict({"train": Dataset.from_dict({"text": texts, "label": labels})}).save_to_disk(folder / "imdb")


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure_ours(preset: str, folder: Path, n_steps: int, bf16: bool) -> list[dict[str, float]]:
    """Per-step seconds of trl_ppo's own timers."""
    from trl_ppo.ppo import Args as PPOArgs
    from trl_ppo.ppo import PPOConfig, train

    _, _, batch, mini, accumulation, new_tokens = PRESETS[preset]
    args = PPOArgs(
        ppo_config=PPOConfig(
            model_name=str(folder / "policy"), reward_model=f"sentiment-analysis:{folder / 'reward'}",
            query_dataset=str(folder / "imdb"), batch_size=batch, mini_batch_size=mini,
            gradient_accumulation_steps=accumulation, steps=batch * n_steps,
        ),
        max_new_tokens=new_tokens, bf16=bf16,
    )
    return [{**split(m), "generate": m["time/generate"], "reward": m["time/reward"], "total": m["time/total"],
             "response_tokens": m["tokens/responses_len_mean"] * batch} for m in train(args)]


def split(stats: dict) -> dict[str, float]:
    """The PPO step's own timers, under the names both implementations give them."""
    return {"forward": float(stats["time/ppo/forward_pass"]), "update": float(stats["time/ppo/optimize_step"]),
            "ppo_step": float(stats["time/ppo/total"])}


def measure_trl(preset: str, folder: Path, n_steps: int) -> list[dict[str, float]]:
    """Per-step seconds of classic TRL's loop, as in its examples/scripts/ppo.py."""
    from transformers import pipeline
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
    from trl.core import LengthSampler

    from trl_ppo.models import load_tokenizer
    from trl_ppo.ppo import load_reviews

    _, _, batch, mini, accumulation, new_tokens = PRESETS[preset]
    config = PPOConfig(
        model_name=str(folder / "policy"), batch_size=batch, mini_batch_size=mini,
        gradient_accumulation_steps=accumulation, log_with=None, seed=0,
    )
    tokenizer = load_tokenizer(config.model_name)
    tokenizer.padding_side = "right"  # TRL pads by itself; its collator expects the default side
    model = AutoModelForCausalLMWithValueHead.from_pretrained(config.model_name)
    ref_model = AutoModelForCausalLMWithValueHead.from_pretrained(config.model_name)
    trainer = PPOTrainer(config, model, ref_model, tokenizer)
    sentiment = pipeline("sentiment-analysis", model=str(folder / "reward"), device=trainer.accelerator.device)
    reviews, length = load_reviews(str(folder / "imdb")), LengthSampler(2, 8)
    generation = dict(min_length=-1, top_k=0, top_p=1.0, do_sample=True, pad_token_id=tokenizer.eos_token_id,
                      max_new_tokens=new_tokens)
    device = trainer.accelerator.device
    steps = []
    for step in range(n_steps):
        texts = reviews[step * batch : (step + 1) * batch]
        queries = [torch.tensor(tokenizer(t[:200])["input_ids"][: length()], device=device) for t in texts]
        start = clock(device)
        responses = trainer.generate(queries, return_prompt=False, **generation)
        generated = clock(device)
        texts = [q + r for q, r in zip(tokenizer.batch_decode(queries), tokenizer.batch_decode(responses), strict=True)]
        outputs = sentiment(texts, top_k=None, function_to_apply="none", batch_size=16)
        scores = [torch.tensor(next(o["score"] for o in out if o["label"] == "POSITIVE")) for out in outputs]
        scored = clock(device)
        stats = trainer.step(queries, responses, scores)
        end = clock(device)
        steps.append({**split(stats), "generate": generated - start, "reward": scored - generated,
                      "total": end - start, "response_tokens": float(sum(len(r) for r in responses))})
    return steps


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def summarise(name: str, steps: list[dict[str, float]], batch: int, memory: float) -> dict[str, float | str]:
    """Medians over the timed steps."""
    median = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
    return {"impl": name, "samples_per_s": batch / median["total"],
            "tokens_per_s": median["response_tokens"] / median["total"], **median, "peak_mem_gib": memory}


def main(args: Args) -> None:
    preset = args.preset or ("gpt2" if torch.cuda.is_available() else "cpu-small")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.measure is not None:
        n_steps = args.warmup + args.steps
        if args.measure == "trl":
            steps = measure_trl(preset, args.work_dir, n_steps)[args.warmup :]
        else:
            steps = measure_ours(preset, args.work_dir, n_steps, bf16=args.measure == "ours-bf16")[args.warmup :]
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(json.dumps(summarise(args.measure, steps, PRESETS[preset][2], peak_memory_gib(device))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.work_dir or Path(tmp)
        if not (folder / "imdb").exists():
            build_assets(preset, folder)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()}"
        _, _, batch, mini, accumulation, new_tokens = PRESETS[preset]
        print(f"preset {preset}: batch {batch}, mini batch {mini} x accumulation {accumulation}, {new_tokens} new "
              f"tokens, 4 PPO epochs; {args.steps} timed steps after {args.warmup} warm-up; device {device}")
        results = {}
        for impl in args.impls:
            command = [sys.executable, __file__, "--preset", preset, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--measure", impl, "--work_dir", str(folder)]
            if args.threads is not None:
                command += ["--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[impl] = json.loads(done.stdout.strip().splitlines()[-1])
        # Seconds per step: the whole step; generation; reward; and PPOTrainer.step, split into its forward
        # pass over the rollouts and its PPO epochs (the rest of it is statistics and advantages).
        print(f"{'impl':10} {'samples/s':>10} {'tokens/s':>10} {'step s':>8} {'generate':>9} {'reward':>8} "
              f"{'ppo step':>9} {'forward':>8} {'epochs':>8} {'peak GiB':>9}")
        for r in results.values():
            print(f"{r['impl']:10} {r['samples_per_s']:10.2f} {r['tokens_per_s']:10.1f} {r['total']:8.2f} "
                  f"{r['generate']:9.2f} {r['reward']:8.2f} {r['ppo_step']:9.2f} {r['forward']:8.2f} "
                  f"{r['update']:8.2f} {r['peak_mem_gib']:9.2f}")
        for ours in ("ours", "ours-bf16"):
            if {ours, "trl"} <= results.keys():
                ratio = results[ours]["samples_per_s"] / results["trl"]["samples_per_s"]
                print(f"ratio {ours} / trl (samples/s): {ratio:.2f}x")


if __name__ == "__main__":
    main(tyro.cli(Args))
