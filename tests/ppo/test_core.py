"""The PPO math against values computed by hand."""

import math

import pytest
import torch

from trl_ppo import core
from trl_ppo.ppo import until_eos


def test_ppo_loss_pieces_by_hand() -> None:
    # Two response tokens and one padding position that must not count.
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 7.0]]))  # ratios 1.5, 0.5 against old log-probs 0
    old_logprobs = torch.zeros(1, 3)
    advantages = torch.tensor([[1.0, -1.0, 5.0]])
    values, old_values = torch.tensor([[0.5, 0.0, 9.0]]), torch.zeros(1, 3)
    returns = torch.tensor([[1.0, -1.0, 0.0]])

    loss, stats = core.ppo_loss(
        logprobs, values, old_logprobs, old_values, advantages, returns, mask,
        cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
    )
    # policy: max(-A r, -A clip(r)) = max(-1.5, -1.2) = -1.2 and max(0.5, 0.8) = 0.8 -> mean -0.2
    assert stats["loss/policy"].item() == pytest.approx(-0.2)
    assert stats["policy/clipfrac"].item() == pytest.approx(1.0)
    # value: token 1 clipped 0.5 -> 0.2: max(0.25, 0.64) = 0.64; token 2: 1 -> 0.5 * mean(0.64, 1) = 0.41
    assert stats["loss/value"].item() == pytest.approx(0.41)
    assert stats["val/clipfrac"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(-0.2 + 0.1 * 0.41)
    assert stats["policy/ratio"].item() == pytest.approx(1.0)
    assert stats["policy/approxkl"].item() == pytest.approx(0.25 * (math.log(1.5) ** 2 + math.log(0.5) ** 2))


def test_micro_batch_losses_sum_to_the_batch_loss() -> None:
    """With the whole batch's token count, per-micro-batch losses add up to the full batch's loss."""
    torch.manual_seed(0)
    shape = (8, 5)
    mask = (torch.arange(5) < torch.randint(1, 6, (8, 1))).float()
    tensors = [torch.randn(shape) for _ in range(6)]
    full, _ = core.ppo_loss(*tensors, mask, 0.2, 0.2, 0.1)
    parts = [
        core.ppo_loss(*(t[rows] for t in tensors), mask[rows], 0.2, 0.2, 0.1, n_tokens=mask.sum())[0]
        for rows in torch.arange(8).split(2)
    ]
    assert sum(parts).item() == pytest.approx(full.item(), abs=1e-6)


def test_gae_by_hand() -> None:
    values = torch.tensor([[0.5, 0.4, 0.3, 7.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = core.gae(values, rewards, mask, gamma=1.0, lam=0.5)
    # deltas from the end: 1 - 0.3 = 0.7; 0.3 - 0.4 = -0.1; 0.4 - 0.5 = -0.1
    raw = torch.tensor([-0.1 + 0.5 * (-0.1 + 0.5 * 0.7), -0.1 + 0.5 * 0.7, 0.7])
    assert returns[0, :3].tolist() == pytest.approx((raw + values[0, :3]).tolist())
    expected = (raw - raw.mean()) / raw.std()  # whitened over the 3 real tokens, Bessel-corrected
    assert advantages[0, :3].tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_gamma_discounts() -> None:
    values, mask = torch.zeros(1, 3), torch.ones(1, 3)
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    _, returns = core.gae(values, rewards, mask, gamma=0.5, lam=1.0)
    assert returns[0].tolist() == pytest.approx([0.25, 0.5, 1.0])


def test_token_rewards_put_the_score_on_the_last_response_token() -> None:
    kl = torch.ones(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards, non_score = core.token_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.1, 1.9, 0.0], [-0.1, -0.1, -1.1]]))
    torch.testing.assert_close(non_score, torch.tensor([[-0.1, -0.1, 0.0], [-0.1, -0.1, -0.1]]))


def test_kl_penalties() -> None:
    lp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert core.kl_penalty(lp, ref, "kl").item() == pytest.approx(1.0)
    assert core.kl_penalty(ref, lp, "abs").item() == pytest.approx(1.0)
    assert core.kl_penalty(lp, ref, "mse").item() == pytest.approx(0.5)
    p, q = torch.tensor([[0.5, 0.5]]).log(), torch.tensor([[0.9, 0.1]]).log()
    exact = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert core.kl_penalty(p, q, "full").item() == pytest.approx(exact)


def test_adaptive_kl_controller() -> None:
    # Error clipped to +-20%, scaled by the share of the horizon one batch covers.
    assert core.adaptive_kl_coef(0.2, kl=9.0, n_samples=128, target=6.0, horizon=10000) == pytest.approx(
        0.2 * (1 + 0.2 * 128 / 10000)
    )
    assert core.adaptive_kl_coef(0.2, kl=5.4, n_samples=100, target=6.0, horizon=100) == pytest.approx(0.18)


def test_whitening() -> None:
    # Mean 3, unbiased variance 4 (as TRL's masked_var): whitened, (x - 3) / 2.
    x = torch.tensor([[1.0, 3.0, 5.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert core.masked_var(x, mask).item() == pytest.approx(4.0)
    assert core.masked_whiten(x, mask)[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    # ... the mean kept: (x - 3) / 2 + 3.
    assert core.masked_whiten(x, mask, shift_mean=False)[0, :3].tolist() == pytest.approx([2.0, 3.0, 4.0], abs=1e-6)


def test_entropy_of_uniform_logits() -> None:
    assert core.entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))


def test_responses_end_at_their_first_eos() -> None:
    eos = 9
    responses = torch.tensor([[5, 6, 9, 9, 9], [9, 9, 9, 9, 9], [1, 2, 3, 4, 5]])
    assert [r.tolist() for r in until_eos(responses, eos)] == [[5, 6, 9], [9], [1, 2, 3, 4, 5]]


@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_head_matches_plain_autograd(monkeypatch: pytest.MonkeyPatch, with_bias: bool) -> None:
    """Log-probabilities, entropies and every gradient equal those of log_softmax on the whole logits.

    The chunk is 3 rows of a 7-token vocabulary, so 10 rows take three full chunks and a partial one.
    """
    monkeypatch.setitem(core.CHUNK_BYTES, "cpu", 3 * 7 * 4)
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True) if with_bias else None
    tokens = torch.randint(0, 7, (2, 5))
    upstream = torch.randn(2, 5, dtype=torch.float64)

    logprobs, entropy = core.head_logprobs(hidden, weight, bias, tokens, with_entropy=True)
    (logprobs * upstream).sum().backward()
    ours = [hidden.grad, weight.grad, *([bias.grad] if with_bias else [])]
    for t in [hidden, weight, bias]:
        if t is not None:
            t.grad = None

    logits = torch.nn.functional.linear(hidden, weight, bias)
    expected = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(logprobs, expected)
    torch.testing.assert_close(entropy, core.entropy_from_logits(logits.detach()))
    for got, want in zip(ours, [hidden.grad, weight.grad, *([bias.grad] if with_bias else [])], strict=True):
        torch.testing.assert_close(got, want)


def test_whitened_rewards_leave_the_padding_at_zero() -> None:
    """A response's advantages and returns do not depend on how much padding follows it."""
    rewards = torch.tensor([[0.1, -0.2, 1.5, 0.0, 0.0], [0.3, 0.2, -0.4, 0.5, 0.7]])
    values = torch.tensor([[0.2, 0.1, 0.3, 0.0, 0.0], [0.1, -0.1, 0.2, 0.4, 0.3]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    padded = core.gae(values, rewards, mask, gamma=1.0, lam=0.95, whiten_rewards=True)
    wider = [torch.cat([t, torch.zeros(2, 3)], 1) for t in (values, rewards, mask)]
    more_padding = core.gae(*wider[:2], wider[2], gamma=1.0, lam=0.95, whiten_rewards=True)
    for a, b in zip(padded, more_padding, strict=True):
        torch.testing.assert_close(a * mask, b[:, :5] * mask)


def test_lora_head_folded_in_gives_peft_own_forward(tmp_path) -> None:  # noqa: ANN001
    """With LoRA on attention and the output projection, our log-probabilities and their gradients are
    PEFT's own forward pass's; with the adapters disabled, the base model's."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from trl_ppo.models import load_policy, output_head, reference_mode, response_hidden

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=30, n_embd=16, n_layer=2, n_head=2, n_positions=16)).save_pretrained(tmp_path)
    policy, reference = load_policy(str(tmp_path), True, 4, 16, torch.device("cpu"), ["c_attn", "lm_head"])
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would hide the adapters
            torch.nn.init.normal_(p, std=0.5)
    ids = torch.randint(0, 30, (3, 9))
    responses = ids[:, -4:]
    logprobs, _, _, _ = policy(ids, torch.ones_like(ids), responses, with_entropy=False)
    logprobs.sum().backward()
    ours = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad and "v_head" not in n}
    policy.zero_grad()
    expected = policy.lm(input_ids=ids).logits[:, -5:-1].log_softmax(-1).gather(-1, responses[..., None]).squeeze(-1)
    expected.sum().backward()
    torch.testing.assert_close(logprobs, expected)
    assert len(ours) == 6  # A and B of two layers' c_attn and of lm_head
    for name, grad in ours.items():
        expected_grad = dict(policy.named_parameters())[name].grad
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5 * expected_grad.abs().max(), msg=name)
    with torch.no_grad(), reference_mode(policy, reference) as ref_lm:
        hidden = response_hidden(ref_lm, ids, torch.ones_like(ids), 4)
        ref_logprobs, _ = core.head_logprobs(hidden, *output_head(ref_lm), responses, with_entropy=False)
        base = ref_lm.get_base_model()
    with torch.no_grad(), policy.lm.disable_adapter():
        base_logits = base(input_ids=ids).logits[:, -5:-1]
    torch.testing.assert_close(ref_logprobs, base_logits.log_softmax(-1).gather(-1, responses[..., None]).squeeze(-1))
