"""Policy with a value head, its frozen reference, and loading by hub name or local path.

`AutoModelForCausalLMWithValueHead` and `create_reference_model` are classic TRL's (0.11) names and calls:
`from_pretrained` (with `peft_config`), `save_pretrained` (the value head saved beside the weights as classic
TRL saves it, so either library loads the other's folders), `generate`, `pretrained_model`, `v_head.summary`.
"""

import copy
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import cached_file

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
        self.v_head = ValueHead(lm.config.get_text_config().hidden_size)

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


class ValueHead(nn.Module):
    """TRL's ValueHead: `summary`, a linear layer from the hidden state to a value (no dropout, see above).

    It stays in float32 whatever the LM's dtype: value targets are small differences.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1, dtype=torch.float32)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden)


# Files of a model folder that may hold classic TRL's `v_head.*` weights, in the order classic TRL looks.
WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]
SHARD_INDEXES = ["model.safetensors.index.json", "pytorch_model.bin.index.json"]
# Classic TRL's from_pretrained keywords for the value head.
V_HEAD_KWARGS = ("summary_dropout_prob", "v_head_initializer_range", "v_head_init_strategy")
# Keywords that locate a hub model's files, passed on when looking for the value head's.
HUB_KWARGS = ("revision", "cache_dir", "token", "subfolder", "local_files_only")
# `cached_file` answers None, offline or online, for a file a folder or repo does not have.
MAY_BE_MISSING = dict(_raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)


class AutoModelForCausalLMWithValueHead(PolicyWithValueHead):
    """Classic TRL's AutoModelForCausalLMWithValueHead: a causal LM (`pretrained_model`) and a value head (`v_head`).

    Loads and saves like classic TRL: the value head's weights, `v_head.summary.*`, go into the LM's own weight
    file, or for PEFT adapters into `pytorch_model.bin` beside them. Not carried over: classic TRL's `forward`
    (this class's forward is the PPO pass of `PolicyWithValueHead`), reward adapters, and k-bit quantisation.
    """

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | nn.Module,
        *model_args: Any,
        peft_config: PeftConfig | None = None,
        is_trainable: bool = False,
        **kwargs: Any,
    ) -> "AutoModelForCausalLMWithValueHead":
        """A hub name or folder (the LM's `from_pretrained` gets `model_args` and `kwargs`: `device_map`, `dtype`,
        ...), or an LM already built. `peft_config` adds new adapters; a folder of saved adapters loads them (on
        its base model, trainable if `is_trainable`, as in classic TRL). A saved value head is restored."""
        head_kwargs = {k: kwargs.pop(k) for k in V_HEAD_KWARGS if k in kwargs}
        source = pretrained_model_name_or_path
        if isinstance(source, nn.Module):
            lm = source
        else:
            source = str(source)
            hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
            adapters = cached_file(source, "adapter_config.json", **hub_kwargs, **MAY_BE_MISSING)
            if adapters is not None:
                if peft_config is not None:
                    warnings.warn(f"peft_config ignored: {source} holds trained adapters", stacklevel=2)
                    peft_config = None
                base = AutoModelForCausalLM.from_pretrained(
                    PeftConfig.from_pretrained(source, **hub_kwargs).base_model_name_or_path, *model_args, **kwargs
                )
                lm = PeftModel.from_pretrained(base, source, is_trainable=is_trainable, **hub_kwargs)
            else:
                lm = AutoModelForCausalLM.from_pretrained(source, *model_args, **kwargs)
        if peft_config is not None:
            lm = get_peft_model(lm, peft_config)
        model = cls(lm)
        if head_kwargs.get("v_head_init_strategy") == "normal":
            nn.init.normal_(model.v_head.summary.weight, std=head_kwargs.get("v_head_initializer_range", 0.2))
            nn.init.zeros_(model.v_head.summary.bias)
        # summary_dropout_prob is accepted and changes nothing: PPO's passes run without dropout (see above).
        saved = {} if isinstance(source, nn.Module) else saved_value_head(source, hub_kwargs)
        if saved:
            model.v_head.load_state_dict(saved)
        # Where the LM's last hidden state comes out (it may sit on a GPU through device_map).
        return model.to_head_device().eval()

    @property
    def pretrained_model(self) -> nn.Module:
        return self.lm

    @property
    def config(self) -> Any:
        return self.lm.config

    @property
    def is_peft_model(self) -> bool:
        return isinstance(self.lm, PeftModel)

    def to_head_device(self) -> "AutoModelForCausalLMWithValueHead":
        self.v_head.to(self.lm.get_output_embeddings().weight.device)
        return self

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The LM's `generate`; a single query may be a 1-D tensor, as classic notebooks pass it."""
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 1:
            args = (args[0][None], *args[1:])
        if isinstance(kwargs.get("input_ids"), torch.Tensor) and kwargs["input_ids"].dim() == 1:
            kwargs["input_ids"] = kwargs["input_ids"][None]
        return self.lm.generate(*args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """The LM (or its adapters) with the value head, as classic TRL saves them."""
        head = {f"v_head.{k}": v.detach() for k, v in self.v_head.state_dict().items()}
        if self.is_peft_model:
            self.lm.save_pretrained(save_directory, *args, **kwargs)
            torch.save(head, os.path.join(save_directory, "pytorch_model.bin"))
        else:
            state_dict = kwargs.pop("state_dict", None) or self.lm.state_dict()
            self.lm.save_pretrained(save_directory, *args, state_dict={**state_dict, **head}, **kwargs)


def saved_value_head(source: str, hub_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The `summary.*` weights of a value head saved in a model folder or hub repo, or {} if it has none."""
    files = [cached_file(source, name, **hub_kwargs, **MAY_BE_MISSING) for name in WEIGHT_FILES]
    for index_name in SHARD_INDEXES:
        index = cached_file(source, index_name, **hub_kwargs, **MAY_BE_MISSING)
        if index is not None:
            with open(index) as f:
                shards = {shard for key, shard in json.load(f)["weight_map"].items() if key.startswith("v_head.")}
            files += [cached_file(source, shard, **hub_kwargs, **MAY_BE_MISSING) for shard in sorted(shards)]
    for path in filter(None, files):
        if path.endswith(".safetensors"):
            with safe_open(path, "pt") as f:
                head = {k: f.get_tensor(k) for k in f.keys() if k.startswith("v_head.")}  # noqa: SIM118
        else:
            head = {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
                    if k.startswith("v_head.")}
        if head:
            return {k.removeprefix("v_head."): v for k, v in head.items()}
    return {}


# Where the layers of a model start, by architecture family (classic TRL's patterns).
LAYER_PATTERNS = ["transformer.h.{layer}", "model.decoder.layers.{layer}", "gpt_neox.layers.{layer}",
                  "model.layers.{layer}"]


def create_reference_model(
    model: PolicyWithValueHead, num_shared_layers: int | None = None, pattern: str | None = None
) -> PolicyWithValueHead:
    """A frozen copy of `model` in eval mode, the reference of the KL penalty (classic TRL's).

    With `num_shared_layers`, the layers below that one (and the embeddings) are frozen in `model` too: the
    policy trains only the layers from `num_shared_layers` up, so both models share the ones below.
    """
    reference = copy.deepcopy(model).requires_grad_(False).eval()
    if num_shared_layers is None:
        return reference
    names = [name for name, _ in model.named_parameters()]
    candidates = [pattern] if pattern is not None else LAYER_PATTERNS
    first = next((p.format(layer=num_shared_layers) for p in candidates
                  if any(p.format(layer=num_shared_layers) in n for n in names)), None)
    if first is None:
        raise ValueError(f"no layer {num_shared_layers} found by the patterns {candidates}")
    for name, parameter in model.named_parameters():
        if first in name:
            break
        parameter.requires_grad_(False)
    return reference


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
) -> tuple[AutoModelForCausalLMWithValueHead, AutoModelForCausalLMWithValueHead | None]:
    """The trainable policy and, without PEFT, a frozen copy of it as the reference.

    With PEFT there is no copy: the reference is the same model with its LoRA adapters disabled
    (see `reference_mode`).
    """
    # No target modules: PEFT's default for the architecture (GPT-2: c_attn), as in TRL's example.
    lora = LoraConfig(
        r=lora_r, lora_alpha=lora_alpha, target_modules=lora_target_modules, bias="none", task_type="CAUSAL_LM"
    ) if use_peft else None
    policy = AutoModelForCausalLMWithValueHead.from_pretrained(name, peft_config=lora, dtype=torch.float32).to(device)
    return policy, None if use_peft else create_reference_model(policy)


@contextmanager
def reference_mode(policy: PolicyWithValueHead, reference: nn.Module | None) -> Iterator[nn.Module]:
    """Yields the LM to score the reference log-probabilities with: the reference's (a bare LM or one with
    a value head), or with none (PEFT) the policy's own with its adapters off."""
    if isinstance(reference, PolicyWithValueHead):
        reference = reference.lm
    with policy.lm.disable_adapter() if reference is None else nullcontext():
        yield policy.lm if reference is None else reference


def trainable_fraction(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
