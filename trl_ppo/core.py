"""The PPO math of TRL's classic PPOTrainer, as pure functions on tensors; and `set_seed` and `LengthSampler`,
which classic code imports from `trl.core`.

Shapes: B rollouts, N response positions. `mask` is 1 on the tokens a rollout generated (a prefix of
the N positions), 0 on the padding after its end.
"""

import math
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

KLPenalty = Literal["kl", "abs", "mse", "full"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Variance over the masked entries, with Bessel's correction like TRL."""
    centred = x - masked_mean(x, mask)
    n = mask.sum()
    return masked_mean(centred**2, mask) * n / (n - 1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale to unit variance over the masked entries; centre too unless `shift_mean` is False."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def adaptive_kl_coef(coef: float, kl: float, n_samples: int, target: float, horizon: int) -> float:
    """Ziegler et al. (2019): move the KL coefficient towards the value that keeps KL near `target`.

    The proportional error is clipped to ±20%, and `horizon` samples make one full correction.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_samples / horizon)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLPenalty) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference).

    For "kl", "abs" and "mse" the inputs are the log-probabilities of the sampled tokens, (B, N).
    For "full" they are whole log-distributions over the vocabulary, (B, N, V): the exact KL.
    """
    if kind == "kl":
        return logprobs - ref_logprobs
    if kind == "abs":
        return (logprobs - ref_logprobs).abs()
    if kind == "mse":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if kind == "full":
        return F.kl_div(ref_logprobs, logprobs, log_target=True, reduction="none").sum(-1)
    raise ValueError(f"unknown kl_penalty {kind!r}")


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL on every token, plus the score on each response's last token.

    Returns (rewards, non_score_rewards), both (B, N).
    """
    non_score = -kl_coef * kl * mask
    last = mask.sum(1).long() - 1
    rewards = non_score.clone()
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, non_score


def gae(
    values: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    whiten_rewards: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens: (whitened advantages, returns)."""
    values, rewards = values * mask, rewards * mask
    if whiten_rewards:
        # Zero again after the end: classic TRL leaves its padding a reward of mean * (1 - 1/std) there,
        # which flows back into the advantages by an amount set by how much padding a row has.
        rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    n = rewards.shape[1]
    for t in reversed(range(n)):
        # Past the end values are zero (masked above), so the last token bootstraps from nothing.
        next_value = values[:, t + 1] if t + 1 < n else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    returns = advantages + values
    return masked_whiten(advantages, mask), returns


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


# Rows of (rows x vocabulary) logits computed at a time: a few MiB on a CPU, so that temporaries stay in
# cache and below the allocator's mmap threshold (a fresh 100 MB tensor per op costs as much in page
# faults as the op itself); larger on a GPU, where each chunk is a few kernel launches.
CHUNK_BYTES = {"cpu": 8 << 20, "cuda": 512 << 20}


def chunk_rows(vocab_size: int, device: torch.device) -> int:
    return max(1, CHUNK_BYTES.get(device.type, CHUNK_BYTES["cuda"]) // (4 * vocab_size))


class SpareBuffer:
    """One flat float buffer that a backward hands back and the next forward reuses.

    The kept softmax is ~100 MB a mini batch at GPT-2's vocabulary. A CPU allocator returns blocks that
    large to the system when freed, and touching a fresh one costs as much in page faults as the
    product that fills it; a GPU's caching allocator would reuse it anyway.
    """

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def take(self, numel: int, like: torch.Tensor) -> torch.Tensor:
        spare, self.buffer = self.buffer, None
        fits = spare is not None and spare.numel() >= numel and (spare.device, spare.dtype) == (like.device, like.dtype)
        return spare if fits else like.new_empty(numel)

    def give(self, buffer: torch.Tensor) -> None:
        if self.buffer is None or buffer.numel() > self.buffer.numel():
            self.buffer = buffer


SPARE = SpareBuffer()


class _HeadLogProbs(torch.autograd.Function):
    """log p(token) and the entropy of softmax(hidden @ weight.T + bias), row chunk by row chunk, in float32.

    Without a backward to follow, the (rows x vocabulary) logits never exist whole: each chunk's go
    into one reused buffer. With one, they are computed in one product and turned into the softmax in
    place, which the backward needs (d log p / d logits = onehot(token) - softmax) and so keeps.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, with_entropy: bool, for_backward: bool):  # noqa: ANN001, ANN205
        n_rows, rows = len(hidden), chunk_rows(weight.shape[0], hidden.device)
        if for_backward:
            ctx.buffer = SPARE.take(n_rows * weight.shape[0], hidden)
            probs = ctx.buffer[: n_rows * weight.shape[0]].view(n_rows, weight.shape[0])
            torch.mm(hidden, weight.T, out=probs)
            if bias is not None:
                probs += bias
        else:
            buffer = hidden.new_empty(min(rows, n_rows), weight.shape[0])
        saved_logits = hidden.new_empty(min(rows, n_rows), weight.shape[0]) if with_entropy else None
        logprobs, entropy = hidden.new_empty(n_rows), hidden.new_empty(n_rows)
        for start in range(0, n_rows, rows):
            part = slice(start, min(start + rows, n_rows))
            if for_backward:
                logits = probs[part]
            else:
                logits = buffer[: part.stop - start]
                torch.mm(hidden[part], weight.T, out=logits)
                if bias is not None:
                    logits += bias
            top = logits.amax(-1)
            token_logits = logits.gather(1, tokens[part, None]).squeeze(1)
            if with_entropy:
                logits_copy = saved_logits[: len(logits)]
                logits_copy.copy_(logits)
            softmax = torch.softmax(logits, -1, out=logits)  # in place: the logits are not needed again
            # logsumexp = max logit - log(largest probability): exact, and cheaper than its own pass.
            lse = top - softmax.amax(-1).log()
            logprobs[part] = token_logits - lse
            if with_entropy:  # H = logsumexp - sum(softmax * logits)
                entropy[part] = lse - torch.linalg.vecdot(softmax, logits_copy)
        ctx.probs = probs if for_backward else None
        ctx.save_for_backward(hidden, weight, bias, tokens)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):  # noqa: ANN001, ANN205
        hidden, weight, bias, tokens = ctx.saved_tensors
        # The kept softmax is used once: it becomes the gradient in place.
        grad_logits, ctx.probs = ctx.probs.mul_(-grad_logprobs[:, None]), None
        grad_logits[torch.arange(len(tokens), device=tokens.device), tokens] += grad_logprobs
        grad_hidden = grad_logits @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad_logits.T @ hidden if ctx.needs_input_grad[1] else None
        grad_bias = grad_logits.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        SPARE.give(ctx.buffer)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def head_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tokens: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (B, N) of `tokens` under the output head, and (if asked) the entropies (B, N).

    Always in float32, also under bf16 autocast: GPT-2's logits reach ~100, where bf16's spacing is 0.5.
    """
    for_backward = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(hidden.device.type, enabled=False):
        logprobs, entropy = _HeadLogProbs.apply(
            at_least_fp32(hidden.flatten(0, 1)), at_least_fp32(weight), at_least_fp32(bias), tokens.flatten(),
            with_entropy, for_backward,
        )
    shape = tokens.shape
    return logprobs.view(shape), entropy.view(shape) if with_entropy else None


def at_least_fp32(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.to(torch.promote_types(x.dtype, torch.float32))


@torch.no_grad()
def full_kl(
    hidden: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor | None],
    ref_hidden: torch.Tensor, ref_head: tuple[torch.Tensor, torch.Tensor | None],
) -> torch.Tensor:
    """Exact KL(policy || reference) per position (B, N), over the whole vocabulary, chunk by chunk, float32."""
    flat, ref_flat = at_least_fp32(hidden.flatten(0, 1)), at_least_fp32(ref_hidden.flatten(0, 1))
    head, ref_head = [at_least_fp32(t) for t in head], [at_least_fp32(t) for t in ref_head]
    rows = chunk_rows(head[0].shape[0], hidden.device)
    kl = flat.new_empty(len(flat))
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, len(flat), rows):
            part = slice(start, start + rows)
            logp = F.linear(flat[part], *head).log_softmax(-1)
            kl[part] = kl_penalty(logp, F.linear(ref_flat[part], *ref_head).log_softmax(-1), "full")
    return kl.view(hidden.shape[:2])


@dataclass
class RunningMoments:
    """Running mean and standard deviation of every score seen so far (classic TRL's score scaling)."""

    mean: float = 0.0
    var: float = 1.0
    std: float = 1.0
    count: float = 1e-24

    def update(self, xs: torch.Tensor) -> None:
        """Chan et al.'s parallel update with the batch `xs` (all processes' scores)."""
        batch_var, batch_mean = torch.var_mean(xs.float(), unbiased=False)
        n, total = xs.numel(), self.count + xs.numel()
        delta = batch_mean.item() - self.mean
        summed = self.var * self.count + delta**2 * self.count * n / total + batch_var.item() * n
        self.mean += delta * n / total
        self.var = summed / total
        self.std = (self.var * total / (total - 1)) ** 0.5
        self.count = total

    def scale(self, scores: torch.Tensor, centre: bool) -> torch.Tensor:
        """Scores divided by the running std, after subtracting the running mean if `centre`."""
        factor = self.std + torch.finfo(scores.dtype).eps
        return (scores - self.mean) / factor if centre else scores / factor


def ppo_loss(
    logprobs: torch.Tensor,
    values: torch.Tensor,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_value: float,
    vf_coef: float,
    n_tokens: torch.Tensor | int | None = None,
    ratio_threshold: float = math.inf,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy loss + vf_coef * clipped value loss, averaged over response tokens.

    `n_tokens` is the token count of the whole optimiser batch when this call sees one micro-batch of
    it: summing the micro-batch losses then gives exactly the full batch's mean, so mini_batch_size x
    gradient_accumulation_steps only splits the work and leaves the update alone. Default: this batch.
    A batch whose mean ratio exceeds `ratio_threshold` gets a zero loss (classic TRL skips it).
    Returns (loss, stats); stats are this batch's own masked means, detached.
    """
    n_tokens = mask.sum() if n_tokens is None else n_tokens

    def token_mean(x: torch.Tensor) -> torch.Tensor:
        return (x * mask).sum() / n_tokens

    # Clamped to a band around the old values: inside the band the value is kept bit for bit.
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (clipped_values - returns) ** 2
    vf_loss = 0.5 * token_mean(torch.max(vf_losses, vf_losses_clipped))

    ratio = torch.exp(logprobs - old_logprobs)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    pg_loss = token_mean(torch.max(pg_losses, pg_losses_clipped))

    def mean(x: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, mask)

    keep = (mean(ratio.detach()) <= ratio_threshold).float()  # a tensor, not a branch: no device sync
    pg_loss, vf_loss = pg_loss * keep, vf_loss * keep
    loss = pg_loss + vf_coef * vf_loss

    with torch.no_grad():
        own_share = n_tokens / mask.sum()  # turns the losses back into this batch's own means
        stats = {
            "loss/policy": pg_loss * own_share,
            "loss/value": vf_loss * own_share,
            "loss/total": loss * own_share,
            "policy/approxkl": 0.5 * mean((logprobs - old_logprobs) ** 2),
            "policy/policykl": mean(old_logprobs - logprobs),
            "policy/clipfrac": mean((pg_losses_clipped > pg_losses).float()),
            "policy/advantages_mean": mean(advantages),
            "policy/ratio": mean(ratio),
            "returns/mean": mean(returns),
            "returns/var": masked_var(returns, mask),
            "val/vpred": mean(values),
            "val/error": mean((values - returns) ** 2),
            "val/clipfrac": mean((vf_losses_clipped > vf_losses).float()),
            "val/mean": mean(old_values),
            "val/var": masked_var(old_values, mask),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's random generators (every device's), as classic TRL's `set_seed`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


class LengthSampler:
    """A length drawn uniformly from [min_value, max_value) with numpy's global generator, as classic TRL's."""

    def __init__(self, min_value: int, max_value: int) -> None:
        self.values = list(range(min_value, max_value))

    def __call__(self) -> int:
        return np.random.choice(self.values)
