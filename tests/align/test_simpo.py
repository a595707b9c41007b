"""SimPO against eq. 6 of Meng et al. (2024) per pair, and TRL's CPO trainer (loss_type="simpo")."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lmforge.align.simpo import simpo_loss


def _avg_logps(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-3 * torch.rand(n, generator=g, dtype=torch.float64) for _ in range(2)]


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_simpo_equals_eq6_per_pair(eps):
    chosen, rejected = _avg_logps()
    beta, gamma = 2.0, 0.7
    out = simpo_loss(chosen, rejected, beta=beta, gamma=gamma, label_smoothing=eps)
    for i in range(len(chosen)):
        z = beta * chosen[i].item() - beta * rejected[i].item() - gamma
        want = (1 - eps) * math.log1p(math.exp(-z)) + eps * math.log1p(math.exp(z))
        assert out.losses[i].item() == pytest.approx(want, rel=1e-12)
        assert out.chosen_rewards[i].item() == pytest.approx(beta * chosen[i].item())


def test_margin_gamma_shifts_the_decision_boundary():
    c = torch.tensor([-1.0])
    # rewards equal up to exactly gamma: loss is log 2
    out = simpo_loss(c, c - 0.25, beta=2.0, gamma=0.5)
    assert out.losses.item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_matches_trl_cpo_simpo(eps):
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    chosen, rejected = _avg_logps(seed=1)
    beta, gamma = 2.5, 1.2
    stub = SimpleNamespace(
        alpha=0.0, beta=beta, loss_type="simpo", simpo_gamma=gamma, label_smoothing=eps,
        accelerator=SimpleNamespace(device="cpu"),
    )  # fmt: skip
    trl_losses, trl_c, trl_r = cpo.CPOTrainer.cpo_loss(stub, chosen, rejected)
    ours = simpo_loss(chosen, rejected, beta=beta, gamma=gamma, label_smoothing=eps)
    torch.testing.assert_close(ours.losses, trl_losses)
    torch.testing.assert_close(ours.chosen_rewards, trl_c)
    torch.testing.assert_close(ours.rejected_rewards, trl_r)
