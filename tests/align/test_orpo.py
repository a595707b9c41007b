"""ORPO against eqs. 4–7 of Hong et al. (2024) per pair, and TRL's ``odds_ratio_loss``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lmforge.align.orpo import log_odds, orpo_loss


def _avg_logps(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-2 * torch.rand(n, generator=g, dtype=torch.float64) - 1e-3 for _ in range(2)]


def test_orpo_equals_the_paper_per_pair():
    chosen, rejected = _avg_logps()
    lam = 0.2
    out = orpo_loss(chosen, rejected, lam=lam)
    for i in range(len(chosen)):
        pw, pl = math.exp(chosen[i].item()), math.exp(rejected[i].item())
        ratio = math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))  # eq. 4, 7
        want = -chosen[i].item() + lam * math.log1p(math.exp(-ratio))  # eq. 6
        assert out.losses[i].item() == pytest.approx(want, rel=1e-9)
        assert out.extra["orpo/log_odds_ratio"][i].item() == pytest.approx(ratio, rel=1e-9)


def test_log_odds_is_stable_at_both_ends():
    a = torch.tensor([-1e-9, -1e-4, -0.5, -0.9, -40.0], dtype=torch.float64)
    p = a.exp()
    # reference in higher precision through log(p) − log1p(−p) only where it is accurate
    torch.testing.assert_close(log_odds(a)[2:4], (p / (1 - p)).log()[2:4])
    assert log_odds(a)[0].item() == pytest.approx(-math.log(1e-9), rel=1e-6)
    assert log_odds(a)[4].item() == pytest.approx(-40.0, abs=1e-12)  # 1 − p ≈ 1
    assert bool(torch.isfinite(log_odds(a)).all())


def test_gradient_flows_to_both_completions():
    chosen, rejected = _avg_logps(n=3)
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    orpo_loss(chosen, rejected, lam=0.1).losses.sum().backward()
    assert bool((chosen.grad < 0).all())  # raising the chosen likelihood lowers the loss
    assert bool((rejected.grad > 0).all())


def test_odds_ratio_term_matches_trl():
    orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    chosen, rejected = _avg_logps(seed=4)
    lam = 0.15
    stub = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device="cpu"))
    trl_losses, trl_c, trl_r, _, trl_log_odds = orpo.ORPOTrainer.odds_ratio_loss(
        stub, chosen, rejected
    )
    out = orpo_loss(chosen, rejected, lam=lam)
    # TRL's "losses" are +λ log σ(ratio); its loss is NLL − mean(losses).
    # (TRL works in fp32 whatever the input dtype.)
    close = dict(check_dtype=False, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses - (-chosen), -trl_losses, **close)
    torch.testing.assert_close(out.extra["orpo/log_odds_ratio"].mean(), trl_log_odds, **close)
    torch.testing.assert_close(out.chosen_rewards, trl_c, **close)
    torch.testing.assert_close(out.rejected_rewards, trl_r, **close)
