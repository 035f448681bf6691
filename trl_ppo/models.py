"""Policy with a value head, its frozen reference, and loading by hub name or local path."""

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from trl_ppo import core


class PolicyWithValueHead(nn.Module):
    """A causal LM plus a linear value head on its last hidden state (TRL's ValueHead, no dropout).

    Dropout stays off everywhere: PPO's first pass must reproduce the rollout's log-probabilities
    exactly (ratio 1), and the split of a batch into micro-batches must not change the update.
    (Classic TRL computes its training forward passes in eval mode too.)
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        # The head stays in float32 whatever the LM's dtype: value targets are small differences.
        self.v_head = nn.Linear(lm.config.get_text_config().hidden_size, 1, dtype=torch.float32)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, responses: torch.Tensor, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Float32 log-probabilities of the responses (B, N), their entropies if asked, and values (B, N); and
        the last hidden states (B, N, H) they came from."""
        hidden = response_hidden(self.lm, input_ids, attention_mask, responses.shape[1])
        logprobs, entropy = core.head_logprobs(hidden, *output_head(self.lm), responses, with_entropy)
        with torch.autocast(hidden.device.type, enabled=False):
            values = self.v_head(hidden.float()).squeeze(-1)
        return logprobs, entropy, values, hidden


def response_hidden(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int) -> torch.Tensor:
    """Last hidden states (B, N, H) at the positions that predict the last `n` tokens.

    Queries are left-padded, so every response occupies the last `n` columns. Only the LM's body runs
    here: the vocabulary projection, which dominates small models, is left to `core.head_logprobs`.
    """
    out = backbone(lm)(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False
    )
    return out.last_hidden_state[:, -(n + 1) : -1]


def backbone(lm: nn.Module) -> nn.Module:
    """The transformer without its output head (GPT-2's `transformer`, Llama's `model`), LoRA layers included."""
    model = lm.get_base_model() if isinstance(lm, PeftModel) else lm
    body = model.base_model  # transformers' name for the module under `base_model_prefix`
    if body is model:
        raise ValueError(f"{type(model).__name__} has no separate body under its output head")
    return body


def output_head(lm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of the LM's output projection as it acts now: with LoRA adapters folded in when active.

    Differentiable in the LM's parameters, so gradients reach the head's weight or its adapters.
    """
    head = lm.get_output_embeddings()
    if isinstance(head, LoraLayer):
        base = head.get_base_layer()
        weight = base.weight
        if not head.disable_adapters and not head.merged:
            for adapter in head.active_adapters:
                if adapter in head.lora_A:
                    weight = weight + head.get_delta_weight(adapter)
        return weight, base.bias
    if type(head) is not nn.Linear:
        raise ValueError(f"unsupported output head {type(head).__name__}: expected a Linear layer")
    return head.weight, head.bias


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
