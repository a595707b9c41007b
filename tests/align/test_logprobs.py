"""Log-prob helpers against plain per-token loops, TRL's helpers and the model's own loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.align.logprobs import (
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    model_logprobs,
    sequence_logprobs,
    token_logprobs,
)
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM


def _batch(b=3, t=7, v=11, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, t, v, generator=g)).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :3] = -100  # a prompt
    labels[1, 5:] = -100  # right padding
    return logits, labels


def test_token_logprobs_equal_a_loop_over_positions():
    logits, labels = _batch(dtype=torch.float64)
    logps, mask = token_logprobs(logits, labels)
    b, t, _ = logits.shape
    for i in range(b):
        for j in range(t):
            scored = j + 1 < t and labels[i, j + 1] != -100
            assert bool(mask[i, j]) == scored
            if scored:
                p = torch.softmax(logits[i, j], -1)[labels[i, j + 1]]
                assert logps[i, j].item() == pytest.approx(math.log(p.item()), abs=1e-12)
            else:
                assert logps[i, j].item() == 0.0


def test_token_logprobs_match_trl_selective_log_softmax():
    utils = pytest.importorskip("trl.trainer.utils")
    logits, labels = _batch(seed=1)
    logps, mask = token_logprobs(logits, labels)
    targets = labels[:, 1:].clamp(min=0)
    ref = utils.selective_log_softmax(logits[:, :-1], targets)
    torch.testing.assert_close(logps[:, :-1][mask[:, :-1]], ref[mask[:, :-1]])


def test_half_precision_logits_are_scored_in_fp32():
    logits, labels = _batch(seed=2)
    full, mask = token_logprobs(logits.bfloat16().float(), labels)
    half, _ = token_logprobs(logits.bfloat16(), labels)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full)


def test_token_logprobs_gradient_is_log_softmax_gradient():
    logits, labels = _batch(b=2, t=4, v=5, dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, labels)[0], (logits,))


def test_sequence_logprobs_sum_and_mean():
    logits, labels = _batch(dtype=torch.float64)
    logps, mask = token_logprobs(logits, labels)
    total, mean = sequence_logprobs(logps, mask), sequence_logprobs(logps, mask, average=True)
    for i in range(logits.shape[0]):
        vals = [logps[i, j].item() for j in range(logits.shape[1]) if mask[i, j]]
        assert total[i].item() == pytest.approx(sum(vals))
        assert mean[i].item() == pytest.approx(sum(vals) / len(vals))


def test_entropy_equals_definition_and_trl():
    logits, _ = _batch(dtype=torch.float64)
    ent = entropy_from_logits(logits, chunk_size=4)  # chunk boundary inside a row of T
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            p = torch.softmax(logits[i, j], -1).tolist()
            assert ent[i, j].item() == pytest.approx(-sum(q * math.log(q) for q in p))
    utils = pytest.importorskip("trl.trainer.utils")
    torch.testing.assert_close(ent, utils.entropy_from_logits(logits))


def test_kl_estimators_follow_schulman_and_k3_is_unbiased():
    g = torch.Generator().manual_seed(0)
    lp, lq = torch.randn(20, generator=g), torch.randn(20, generator=g)
    r = torch.exp(lq - lp)
    torch.testing.assert_close(kl_estimate(lp, lq, "k1"), -torch.log(r))
    torch.testing.assert_close(kl_estimate(lp, lq, "k2"), 0.5 * torch.log(r) ** 2)
    torch.testing.assert_close(kl_estimate(lp, lq, "k3"), r - 1 - torch.log(r))
    assert bool((kl_estimate(lp, lq, "k3") >= 0).all())
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(lp, lq, "k4")
    # E_{x~p}[k3] = KL(p || q) for a categorical p, q (Monte Carlo, 200k samples).
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    est = kl_estimate(p.log()[x], q.log()[x], "k3").mean().item()
    assert est == pytest.approx((p * (p / q).log()).sum().item(), abs=0.01)


def test_masked_mean_ignores_masked_entries():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    torch.testing.assert_close(masked_mean(x, m, dim=-1), torch.tensor([1.5, 3.0]))


def test_model_logprobs_sum_to_the_models_negative_loss():
    torch.manual_seed(0)
    model = CausalLM(preset_config("tiny", vocab_size=64, hidden_size=32, intermediate_size=64))
    ids = torch.randint(0, 64, (2, 9))
    labels = ids.clone()
    labels[:, :4] = -100
    logps, mask, ent = model_logprobs(model, ids, labels, with_entropy=True)
    nll = model(ids, labels=labels, loss_reduction="sum").loss
    torch.testing.assert_close(-logps.sum(), nll)
    assert mask.sum().item() == 2 * 5 and ent.shape == (2, 9)
    hot, _, _ = model_logprobs(model, ids, labels, temperature=0.5)
    logits = model(ids).logits / 0.5
    want = F.log_softmax(logits[0, 4], -1)[ids[0, 5]]
    torch.testing.assert_close(hot[0, 4], want)


def test_model_logprobs_skips_prompt_logits_without_changing_results():
    torch.manual_seed(1)
    model = CausalLM(preset_config("tiny", vocab_size=64, hidden_size=32, intermediate_size=64))
    ids = torch.randint(0, 64, (3, 10))
    labels = ids.clone()
    labels[0, :6] = labels[1, :4] = labels[2, :7] = -100  # first scored logits position: 3
    logps, mask, ent = model_logprobs(model, ids, labels, with_entropy=True)
    logits = model(ids).logits
    want, want_mask = token_logprobs(logits, labels)
    torch.testing.assert_close(logps, want)
    assert torch.equal(mask, want_mask)
    torch.testing.assert_close(ent[:, 3:], entropy_from_logits(logits)[:, 3:])
    assert ent[:, :3].abs().sum() == 0
    with pytest.raises(ValueError, match="score no token"):
        model_logprobs(model, ids, torch.full_like(ids, -100))
