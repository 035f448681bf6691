"""The seed's four comparisons (TRL's benchmark plots), read off each run's config.

The base model is the one most runs used (in TRL's sweep, gpt2-imdb: the baseline, the grad-accum
and the PEFT variants); each comparison changes one thing against it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchmark.report.runs import Run, config_value, exp_name

Preset = Literal["baseline", "grad-accum", "model-size", "peft"]
PRESET_TITLES: dict[str, str] = {
    "baseline": "PPO sentiment tuning: the baseline over seeds",
    "grad-accum": "Gradient accumulation against one mini batch per update",
    "model-size": "Model size",
    "peft": "LoRA (PEFT) against full fine-tuning",
}


@dataclass(frozen=True)
class Setup:
    """The three things the presets compare."""

    model: str
    grad_accum: int
    peft: bool

    @classmethod
    def of(cls, run: Run) -> Setup:
        peft = config_value(run.config, "use_peft")
        if peft is None:
            # Classic TRL keeps `use_peft` in the script's own arguments, which it never logs.
            peft = "peft" in exp_name(run).lower()
        return cls(
            model=str(config_value(run.config, "model_name") or "unknown model"),
            grad_accum=int(config_value(run.config, "gradient_accumulation_steps") or 1),
            peft=bool(peft),
        )


def model_label(model: str) -> str:
    """A model as a variant's name: a hub name as it is (`lvwerra/gpt2-imdb`), a local folder by its own name."""
    return Path(model).name if model.count("/") > 1 or model.startswith((".", "/")) else model


def preset_selection(preset: Preset, runs: list[Run]) -> tuple[list[Run], Callable[[Run], str]]:
    """The runs a preset compares, in display order, and the label of each one's variant."""
    if not runs:
        return [], exp_name
    setups = {run.id: Setup.of(run) for run in runs}
    base = Counter(s.model for s in setups.values()).most_common(1)[0][0]

    def plain(s: Setup) -> bool:
        return s.model == base and s.grad_accum == 1 and not s.peft

    rules: dict[Preset, tuple[Callable[[Setup], bool], Callable[[Setup], str], Callable[[Setup], tuple]]] = {
        "baseline": (plain, lambda s: model_label(s.model), lambda s: ()),
        "grad-accum": (
            lambda s: s.model == base and not s.peft,
            lambda s: f"grad accum {s.grad_accum}",
            lambda s: (s.grad_accum,),
        ),
        "model-size": (
            lambda s: not s.peft and (s.model != base or s.grad_accum == 1),
            lambda s: model_label(s.model) + (f", grad accum {s.grad_accum}" if s.grad_accum != 1 else ""),
            lambda s: (not plain(s),),
        ),
        "peft": (
            lambda s: s.model == base and s.grad_accum == 1,
            lambda s: "LoRA (PEFT)" if s.peft else "full fine-tuning",
            lambda s: (s.peft,),
        ),
    }
    keep, label, order = rules[preset]
    chosen = sorted((r for r in runs if keep(setups[r.id])), key=lambda r: order(setups[r.id]))
    return chosen, lambda run: label(setups[run.id])
