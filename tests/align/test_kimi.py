"""Kimi k1.5 surrogate (eq. 3) and length-penalty reward (§2.3.3) against plain loops."""

from __future__ import annotations

import pytest
import torch

from lmforge.align.kimi import kimi_length_rewards, kimi_loss


def _inputs(b=6, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 3:] = mask[4, 1:] = False
    old = -torch.rand(b, t, generator=g, dtype=torch.float64)
    new = (old + 0.2 * torch.randn(b, t, generator=g, dtype=torch.float64)).requires_grad_(True)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    return new, old, rewards, mask


def test_surrogate_equals_eq3_with_the_mean_reward_baseline():
    new, old, rewards, mask = _inputs()
    tau, k = 0.3, 3
    out = kimi_loss(new, old, rewards, mask, group_size=k, tau=tau)
    want = 0.0
    for i in range(6):
        group = rewards[(i // k) * k : (i // k + 1) * k].tolist()
        baseline = sum(group) / k  # τ log Z ≈ mean reward of the k samples
        delta = sum((new[i, t] - old[i, t]).item() for t in range(5) if mask[i, t])
        want += (rewards[i].item() - baseline - tau * delta) ** 2
    assert out.count == 6
    assert out.loss_sum.item() == pytest.approx(want, rel=1e-12)


def test_gradient_is_the_papers_policy_gradient_scaled_by_two_tau():
    new, old, rewards, mask = _inputs(seed=1)
    tau, k = 0.5, 3
    kimi_loss(new, old, rewards, mask, group_size=k, tau=tau).loss_sum.backward()
    groups = rewards.view(-1, k)
    centred = (groups - groups.mean(-1, keepdim=True)).view(-1)
    delta = ((new - old) * mask).sum(-1).detach()
    # ∇ = −2τ [ (r − r̄) ∇log π − τ Δ ∇Δ ], and ∇ log π(y) w.r.t. each token log-prob is 1
    want = (-2 * tau * (centred - tau * delta)).unsqueeze(-1) * mask
    torch.testing.assert_close(new.grad, want)


def test_on_policy_loss_gradient_pushes_up_above_average_responses():
    new, _, rewards, mask = _inputs(seed=2)
    kimi_loss(new, new.detach(), rewards, mask, group_size=3).loss_sum.backward()
    assert bool((new.grad[rewards > 0.5][mask[rewards > 0.5]] < 0).all())


def test_length_rewards_follow_the_formula():
    lengths, correct = [10, 20, 30, 40], [True, True, False, False]
    got = kimi_length_rewards(lengths, correct)
    lam = [0.5 - (n - 10) / 30 for n in lengths]  # 0.5, 1/6, −1/6, −0.5
    assert got == pytest.approx([lam[0], lam[1], min(0, lam[2]), min(0, lam[3])])
    assert kimi_length_rewards([7, 7], [True, False]) == [0.0, 0.0]
    assert kimi_length_rewards([5, 50], [False, False]) == pytest.approx([0.0, -0.5])
    with pytest.raises(ValueError):
        kimi_length_rewards([1, 2], [True])


def test_argument_checks():
    new, old, rewards, mask = _inputs()
    with pytest.raises(ValueError, match="tau"):
        kimi_loss(new, old, rewards, mask, group_size=3, tau=0.0)
    with pytest.raises(ValueError, match="group_size"):
        kimi_loss(new, old, rewards, mask, group_size=4)
