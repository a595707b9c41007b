"""GRPO family against plain loops of the papers' equations, against TRL's
``GRPOTrainer._compute_loss`` (called with a stand-in ``self`` whose per-token log-prob method
returns given tensors), and invariance of loss and gradients to micro-batching."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lmforge.align.grpo import grpo_advantages, grpo_loss

B, T, L_MAX = 6, 8, 8


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate([8, 3, 5, 1, 6, 7]):
        mask[i, :n] = True  # completions of different lengths, right-padded
    old = -2 * torch.rand(B, T, generator=g, dtype=torch.float64)
    new = (old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref = old + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return new, old, ref, adv, mask


def test_group_advantages_equal_per_group_statistics():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0])
    adv = grpo_advantages(rewards, group_size=4)
    centred = grpo_advantages(rewards, group_size=4, scale="none")
    for g in range(3):
        group = rewards[4 * g : 4 * g + 4].tolist()
        mu, sd = statistics.mean(group), statistics.stdev(group)
        for k, r in enumerate(group):
            assert adv[4 * g + k].item() == pytest.approx((r - mu) / (sd + 1e-4), rel=1e-6)
            assert centred[4 * g + k].item() == pytest.approx(r - mu, rel=1e-6)
    assert adv[4:8].abs().sum() == 0  # all-equal group: no signal
    with pytest.raises(ValueError, match="groups"):
        grpo_advantages(rewards[:10], group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(rewards, group_size=1)


def _reference(new, old, ref, adv, mask, aggregation, eps_low, eps_high, beta):
    """The papers' objectives as loops (DeepSeekMath eq. 3; Dr. GRPO; DAPO objective; GSPO)."""
    per_seq, all_tokens = [], []
    for i in range(B):
        steps = [t for t in range(T) if mask[i, t]]
        a = adv[i].item()
        terms = []
        if aggregation == "gspo":
            s = math.exp(sum(new[i, t].item() - old[i, t].item() for t in steps) / len(steps))
        for t in steps:
            rho = s if aggregation == "gspo" else math.exp(new[i, t].item() - old[i, t].item())
            term = -min(rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a)
            log_r = ref[i, t].item() - new[i, t].item()
            term += beta * (math.exp(log_r) - log_r - 1)
            terms.append(term)
        per_seq.append(terms)
        all_tokens += terms
    if aggregation in ("grpo", "gspo"):
        return sum(sum(s) / len(s) for s in per_seq) / B
    if aggregation == "dr_grpo":
        return sum(all_tokens) / (B * L_MAX)
    return sum(all_tokens) / len(all_tokens)


CASES = [("grpo", 0.2, 0.2, 0.04), ("dr_grpo", 0.2, 0.2, 0.0), ("dapo", 0.2, 0.28, 0.0),
         ("gspo", 0.05, 0.08, 0.02)]  # fmt: skip


@pytest.mark.parametrize("aggregation,eps_low,eps_high,beta", CASES)
def test_loss_equals_the_papers_objective(aggregation, eps_low, eps_high, beta):
    new, old, ref, adv, mask = _inputs()
    out = grpo_loss(new, old, adv, mask, aggregation=aggregation, eps_low=eps_low,
                    eps_high=eps_high, beta=beta, ref_logps=ref, max_completion_length=L_MAX)  # fmt: skip
    want = _reference(new, old, ref, adv, mask, aggregation, eps_low, eps_high, beta)
    assert (out.loss_sum / out.count).item() == pytest.approx(want, rel=1e-12)
    assert "kl" in out.metrics if beta else "kl" not in out.metrics


@pytest.mark.parametrize("aggregation,eps_low,eps_high,beta", CASES)
def test_loss_and_gradients_are_invariant_to_micro_batching(aggregation, eps_low, eps_high, beta):
    new, old, ref, adv, mask = _inputs(seed=1)
    kw = dict(aggregation=aggregation, eps_low=eps_low, eps_high=eps_high, beta=beta,
              max_completion_length=L_MAX)  # fmt: skip
    full = grpo_loss(new, old, adv, mask, ref_logps=ref, **kw)
    (full.loss_sum / full.count).backward()
    grad, new.grad = new.grad.clone(), None
    parts = [
        grpo_loss(new[r], old[r], adv[r], mask[r], ref_logps=ref[r], **kw)
        for r in (slice(0, 1), slice(1, 4), slice(4, 6))  # unequal micro-batches
    ]
    loss = sum(p.loss_sum for p in parts) / sum(int(p.count) for p in parts)
    loss.backward()
    assert loss.item() == pytest.approx((full.loss_sum / full.count).item(), rel=1e-12)
    torch.testing.assert_close(new.grad, grad)
    for name, value in full.metrics.items():
        assert sum(p.metrics[name] for p in parts).item() == pytest.approx(value.item())


def test_one_step_on_policy_gradient_is_the_advantage_weighted_score():
    new, _, _, adv, mask = _inputs(seed=2)
    out = grpo_loss(new, new.detach(), adv, mask, aggregation="dapo")
    (out.loss_sum / out.count).backward()
    # ratio 1, never clipped: ∇ = −A_i / Σ|o| on every completion token (REINFORCE with baseline)
    want = -adv.unsqueeze(-1).expand(B, T) * mask / mask.sum()
    torch.testing.assert_close(new.grad, want)


def test_argument_checks():
    new, old, ref, adv, mask = _inputs()
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(new, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(new, old, adv, mask, aggregation="dr_grpo")
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(new, old, adv, mask, aggregation="bnpo?")
    grpo_loss(new, old, adv, mask, beta=0.0)  # β = 0: no reference needed


def _trl_grpo(new, old, ref, adv, mask, loss_type, level, eps_low, eps_high, beta):
    grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    accel = SimpleNamespace(
        num_processes=1, gather=lambda x: x, reduce=lambda x, reduction="sum": x
    )
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (new, torch.zeros_like(new), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level=level, beta=beta, loss_type=loss_type,
        epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None),
        model=SimpleNamespace(training=False), max_completion_length=L_MAX,
        accelerator=accel, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
    )  # fmt: skip
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    return grpo.GRPOTrainer._compute_loss(stub, None, inputs)


@pytest.mark.parametrize("aggregation,eps_low,eps_high,beta", CASES)
def test_matches_trl_grpo_trainer(aggregation, eps_low, eps_high, beta):
    new, old, ref, adv, mask = _inputs(seed=3)
    loss_type, level = ("grpo", "sequence") if aggregation == "gspo" else (aggregation, "token")
    trl_loss = _trl_grpo(new, old, ref, adv, mask, loss_type, level, eps_low, eps_high, beta)
    trl_loss.backward()
    trl_grad, new.grad = new.grad.clone(), None
    out = grpo_loss(new, old, adv, mask, aggregation=aggregation, eps_low=eps_low,
                    eps_high=eps_high, beta=beta, ref_logps=ref, max_completion_length=L_MAX)  # fmt: skip
    loss = out.loss_sum / out.count
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-10)
    torch.testing.assert_close(new.grad, trl_grad)


def test_grpo_raises_the_reward_of_a_tiny_model():
    """Smoke test through a real model: reward = share of completion tokens equal to 7."""
    from lmforge.align.logprobs import model_logprobs
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    torch.manual_seed(0)
    model = CausalLM(preset_config("tiny", vocab_size=16, hidden_size=32, intermediate_size=64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    prompts = torch.randint(0, 16, (4, 3)).repeat_interleave(4, dim=0)  # 4 prompts × G=4
    before = list(p.detach().clone() for p in model.parameters())
    history = []
    for _ in range(15):
        with torch.no_grad():
            ids = prompts
            for _ in range(5):
                probs = torch.softmax(model(ids).logits[:, -1], -1)
                ids = torch.cat([ids, torch.multinomial(probs, 1)], dim=1)
        rewards = (ids[:, 3:] == 7).float().mean(-1)
        history.append(rewards.mean().item())
        labels = ids.clone()
        labels[:, :3] = -100
        logps, mask, _ = model_logprobs(model, ids, labels)
        adv = grpo_advantages(rewards, group_size=4)
        out = grpo_loss(logps, logps.detach(), adv, mask, aggregation="grpo")
        opt.zero_grad()
        (out.loss_sum / out.count).backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert sum(history[-3:]) / 3 > sum(history[:3]) / 3 + 0.3, history
