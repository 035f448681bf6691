"""The reward: the POSITIVE logit of a text classifier, loaded through a transformers pipeline like the original,
or, for sentiment control, that logit shaped by the sentiment each query asks for."""

import torch
from transformers import pipeline


class SentimentReward:
    """Scores texts with `<task>:<model>`, e.g. `sentiment-analysis:lvwerra/distilbert-imdb`.

    The classic script calls the pipeline at batch 16 (`function_to_apply="none"`); here the pipeline's
    own tokenizer and model score the whole batch in one call, with the same truncation, for the same logits.
    """

    def __init__(self, spec: str, device: torch.device) -> None:
        task, model = parse_reward_model(spec)
        self.pipe = pipeline(task, model=model, device=device)
        labels = {label: i for i, label in self.pipe.model.config.id2label.items()}
        if "POSITIVE" not in labels:
            raise ValueError(f"reward model {model!r} has no POSITIVE label (labels: {sorted(labels)})")
        self.positive = labels["POSITIVE"]

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Raw POSITIVE logits (the original's reward scale), float32 on the CPU."""
        inputs = self.pipe.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        logits = self.pipe.model(**inputs.to(self.pipe.device)).logits
        return logits[:, self.positive].float().cpu()


# The control tokens of the classic gpt2-control notebook, in the order `control_rewards` indexes them.
CONTROL_TOKENS = ("[negative]", "[neutral]", "[positive]")


def control_rewards(logits: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
    """Each POSITIVE logit x turned into the reward of its task (an index into CONTROL_TOKENS), as the classic
    notebook shapes it: [negative] -x, [neutral] -2|x| + 4 (highest when the classifier cannot tell), [positive] x."""
    shaped = torch.stack([-logits, -2 * logits.abs() + 4, logits])
    return shaped.gather(0, tasks.reshape(1, -1)).squeeze(0)


def parse_reward_model(spec: str) -> tuple[str, str]:
    """Split `<task>:<model>`; the model part may itself contain colons (Windows paths, revisions)."""
    task, sep, model = spec.partition(":")
    if not sep or not task or not model:
        raise ValueError(f"reward_model must look like '<task>:<model>', got {spec!r}")
    return task, model
