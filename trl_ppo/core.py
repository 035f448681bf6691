"""The PPO math of TRL's classic PPOTrainer, as pure functions on tensors.

Shapes: B rollouts, N response positions. `mask` is 1 on the tokens a rollout generated (a prefix of
the N positions), 0 on the padding after its end.
"""

from typing import Literal

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
        rewards = masked_whiten(rewards, mask, shift_mean=False)
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy loss + vf_coef * clipped value loss, averaged over response tokens.

    `n_tokens` is the token count of the whole optimiser batch when this call sees one micro-batch of
    it: summing the micro-batch losses then gives exactly the full batch's mean, so mini_batch_size x
    gradient_accumulation_steps only splits the work and leaves the update alone. Default: this batch.
    Returns (loss, stats); stats are this batch's own masked means, detached.
    """
    n_tokens = mask.sum() if n_tokens is None else n_tokens

    def token_mean(x: torch.Tensor) -> torch.Tensor:
        return (x * mask).sum() / n_tokens

    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (clipped_values - returns) ** 2
    vf_loss = 0.5 * token_mean(torch.max(vf_losses, vf_losses_clipped))

    ratio = torch.exp(logprobs - old_logprobs)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    pg_loss = token_mean(torch.max(pg_losses, pg_losses_clipped))
    loss = pg_loss + vf_coef * vf_loss

    def mean(x: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, mask)

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
