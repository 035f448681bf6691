"""Policy with a value head, its frozen reference, and loading by hub name or local path."""

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


class PolicyWithValueHead(nn.Module):
    """A causal LM plus a linear value head on its last hidden state (TRL's ValueHead, no dropout).

    Dropout stays off everywhere: PPO's first pass must reproduce the rollout's log-probabilities
    exactly (ratio 1), and the split of a batch into micro-batches must not change the update.
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        # The head stays in float32 whatever the LM's dtype: value targets are small differences.
        self.v_head = nn.Linear(lm.config.get_text_config().hidden_size, 1, dtype=torch.float32)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, N, V) predicting the last `n_response` tokens, and values (B, N) of their states."""
        logits, hidden = response_logits(self.lm, input_ids, attention_mask, n_response)
        return logits, self.v_head(hidden.float()).squeeze(-1)


def response_logits(
    lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits (B, N, V) and last hidden states (B, N, H) at the positions predicting the responses.

    Queries are left-padded, so every response occupies the last `n_response` columns, and only the
    positions that predict them need logits (the vocabulary projection dominates small models).
    """
    out = lm(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=n_response + 1,
        output_hidden_states=True,
        use_cache=False,
    )
    return out.logits[:, :-1].float(), out.hidden_states[-1][:, -(n_response + 1) : -1]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, as `generate` counts them with left padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(name)
    # Whole-batch generation: queries are padded on the left so all responses start in one column.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    name: str,
    use_peft: bool,
    lora_r: int,
    lora_alpha: int,
    device: torch.device,
    lora_target_modules: list[str] | None = None,
) -> tuple[PolicyWithValueHead, nn.Module | None]:
    """The trainable policy and, without PEFT, a frozen copy of it as the reference.

    With PEFT there is no copy: the reference is the same model with its LoRA adapters disabled
    (see `reference_mode`).
    """
    lm = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    reference = None
    if use_peft:
        from peft import LoraConfig, get_peft_model

        # No target modules: PEFT's default for the architecture (GPT-2: c_attn), as in TRL's example.
        lora = LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, target_modules=lora_target_modules, bias="none", task_type="CAUSAL_LM"
        )
        lm = get_peft_model(lm, lora)
    else:
        reference = copy.deepcopy(lm).requires_grad_(False).eval().to(device)
    return PolicyWithValueHead(lm).eval().to(device), reference


@contextmanager
def reference_mode(policy: PolicyWithValueHead, reference: nn.Module | None) -> Iterator[nn.Module]:
    """Yields the LM to score the reference log-probabilities with."""
    with policy.lm.disable_adapter() if reference is None else nullcontext():
        yield policy.lm if reference is None else reference


def trainable_fraction(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
