"""SDE marginals, DSM and the reverse-SDE samplers on Gaussian data (closed forms)."""

import torch

from lmforge.diffusion.sde import (
    VESDE,
    VPSDE,
    SubVPSDE,
    dsm_loss,
    euler_maruyama,
    predictor_corrector,
)


def _gaussian_score(sde, s0):
    def score(x, t):
        m, s = sde.marginal(t)
        return -x / (m**2 * s0**2 + s**2).reshape(-1, *([1] * (x.dim() - 1)))

    return score


def test_marginals_solve_the_moment_odes():
    # d var / dt = 2 f' var + g² for a linear drift f = a(t) x (Särkkä & Solin, eq. 5.51)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    h = 1e-5
    var0 = 0.3
    for sde in (VPSDE(), SubVPSDE(), VESDE()):

        def var(tt, sde=sde):
            m, s = sde.marginal(tt)
            return m**2 * var0 + s**2

        dvar = (var(t + h) - var(t - h)) / (2 * h)
        a = sde.drift(torch.ones(len(t), 1, dtype=torch.float64), t)[:, 0]
        torch.testing.assert_close(
            dvar, 2 * a * var(t) + sde.diffusion(t) ** 2, rtol=1e-5, atol=1e-6
        )


def test_dsm_prefers_the_true_score():
    torch.manual_seed(0)
    sde, s0 = VPSDE(), 0.5
    x0 = s0 * torch.randn(4000, 2, dtype=torch.float64)
    exact = dsm_loss(_gaussian_score(sde, s0), sde, x0).mean()
    torch.manual_seed(0)
    wrong = dsm_loss(_gaussian_score(sde, 1.0), sde, x0).mean()
    assert exact < wrong


def test_samplers_recover_the_data_variance():
    sde, s0 = VPSDE(), 0.5
    g = torch.Generator().manual_seed(0)
    x = euler_maruyama(_gaussian_score(sde, s0), sde, (3000, 1), steps=300, generator=g)
    assert abs(x.std().item() - s0) < 0.05
    y = predictor_corrector(_gaussian_score(sde, s0), sde, (3000, 1), steps=100, generator=g)
    assert abs(y.std().item() - s0) < 0.06
