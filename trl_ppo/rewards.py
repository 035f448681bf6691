"""The reward: the POSITIVE logit of a text classifier, through a transformers pipeline like the original."""

import torch
from transformers import pipeline


class SentimentReward:
    """Scores texts with `<task>:<model>`, e.g. `sentiment-analysis:lvwerra/distilbert-imdb`."""

    def __init__(self, spec: str, device: torch.device, batch_size: int = 16) -> None:
        task, model = parse_reward_model(spec)
        self.pipe = pipeline(task, model=model, device=device)
        labels = set(self.pipe.model.config.id2label.values())
        if "POSITIVE" not in labels:
            raise ValueError(f"reward model {model!r} has no POSITIVE label (labels: {sorted(labels)})")
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        # Raw logits, not probabilities: the original's reward scale (function_to_apply="none").
        outputs = self.pipe(
            texts, top_k=None, function_to_apply="none", batch_size=self.batch_size, truncation=True
        )
        return torch.tensor([next(o["score"] for o in out if o["label"] == "POSITIVE") for out in outputs])


def parse_reward_model(spec: str) -> tuple[str, str]:
    """Split `<task>:<model>`; the model part may itself contain colons (Windows paths, revisions)."""
    task, sep, model = spec.partition(":")
    if not sep or not task or not model:
        raise ValueError(f"reward_model must look like '<task>:<model>', got {spec!r}")
    return task, model
