"""The checks of a study, with numbers, from its offline W&B runs (the results' README quotes them).

    python studies/findings.py baseline|grad_accum|model_size|peft RUN_DIR

A run's result is the mean env/reward_mean of its last 10 steps, its start that of its first 10.
Differences between variants come with a Welch 95% interval over seeds.
"""

import math
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import mean, stdev

from benchmark.report.aggregate import final_value, mean_ci95, series, t975
from benchmark.report.offline import find_run_files, read_run
from benchmark.report.runs import config_value

WINDOW = 10


def load(run_dir: Path) -> dict[str, list]:
    """exp_name -> the reward series of its runs, by seed."""
    variants: dict[str, list] = {}
    runs = [read_run(path)[0] for path in find_run_files(run_dir / "wandb")]
    for run in sorted(runs, key=lambda r: config_value(r.config, "seed")):
        variants.setdefault(config_value(run.config, "exp_name"), []).append(series(run, "env/reward_mean", "_step"))
    return variants


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(b) - mean(a) and its 95% interval (Welch-Satterthwaite degrees of freedom)."""
    va, vb = stdev(a) ** 2 / len(a), stdev(b) ** 2 / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t975(max(1.0, df)) * math.sqrt(va + vb)
    delta = mean(b) - mean(a)
    return delta, delta - half, delta + half


def final(runs: list) -> list[float]:
    return [final_value(s, WINDOW) for s in runs]


def compare(name: str, base: list, other: list, verdict: Callable[[float, float], str]) -> str:
    delta, low, high = welch(final(base), final(other))
    return (f"- {name}: difference in final reward {delta:+.3f}, 95% interval [{low:+.3f}, {high:+.3f}]: "
            f"{verdict(low, high)}")


def main(study: str, run_dir: Path) -> None:
    variants = load(run_dir)
    for name, runs in variants.items():
        print(f"- {name}: {len(runs)} seeds, final reward {mean_ci95(final(runs))} (mean ± 95% interval), "
              f"start {mean(float(s.y[:WINDOW].mean()) for s in runs):.3f}")
    if study == "baseline":
        (runs,) = variants.values()
        starts = [float(s.y[:WINDOW].mean()) for s in runs]
        rises = [f - s for f, s in zip(final(runs), starts, strict=True)]
        noise = stdev(starts)
        print(f"- rise per seed (last {WINDOW} steps minus first {WINDOW}): " + ", ".join(f"{r:+.3f}" for r in rises)
              + f"; seed-to-seed noise of the first {WINDOW} steps (std): {noise:.3f}; every seed rises by more: "
              + ("yes" if min(rises) > noise else "NO"))
    elif study == "grad_accum":
        plain, accumulated = variants["ppo"], variants["ppo_step_grad_accu"]
        print(compare("1 x 16 against 16 x 1", plain, accumulated,
                      lambda low, high: "contains 0, as it should" if low <= 0 <= high else "DOES NOT contain 0"))
    elif study == "model_size":
        for larger in ("ppo_gpt2_medium", "ppo_gpt2_large"):
            print(compare(f"{larger} against ppo_gpt2", variants["ppo_gpt2"], variants[larger],
                          lambda low, high: "not worse" if high >= 0 else "WORSE"))
    elif study == "peft":
        lora = variants["ppo_peft"][0].run.summary
        trainable, total = lora["model/trainable_params"], lora["model/total_params"]
        print(f"- LoRA trains {trainable:,} of {total:,} parameters ({100 * trainable / total:.1f}%)")
        print(compare("LoRA against full fine-tuning", variants["ppo"], variants["ppo_peft"],
                      lambda low, high: "better" if low > 0 else "worse" if high < 0 else "no clear difference"))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
