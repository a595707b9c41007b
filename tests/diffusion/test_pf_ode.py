"""Dormand–Prince and the PF-ODE likelihood on a Gaussian, where everything is closed form."""

import math

import torch

from lmforge.diffusion.pf_ode import dormand_prince, ode_likelihood, ode_sample
from lmforge.diffusion.sde import VESDE, VPSDE


def test_dormand_prince_exponential_decay():
    y, nfe = dormand_prince(
        lambda t, y: -y,
        torch.tensor([1.0, 2.0], dtype=torch.float64),
        0.0,
        1.0,
        rtol=1e-8,
        atol=1e-10,
    )
    torch.testing.assert_close(
        y, torch.tensor([1.0, 2.0], dtype=torch.float64) * math.exp(-1), rtol=1e-7, atol=0
    )
    assert nfe < 300
    back, _ = dormand_prince(
        lambda t, y: t * y, torch.ones(1, dtype=torch.float64), 1.0, 0.0, rtol=1e-8, atol=1e-10
    )
    torch.testing.assert_close(back, torch.tensor([math.exp(-0.5)], dtype=torch.float64))


def _gaussian_score(sde, s0):
    """Exact score of p_t when x_0 ~ N(0, s0² I)."""

    def score(x, t):
        m, s = sde.marginal(t)
        var = (m**2 * s0**2 + s**2).reshape(-1, *([1] * (x.dim() - 1)))
        return -x / var

    return score


def test_exact_likelihood_of_a_gaussian():
    s0 = 0.7
    for sde in (VPSDE(), VESDE(sigma_min=0.01, sigma_max=50.0)):
        score = _gaussian_score(sde, s0)
        x = torch.randn(3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        want = -0.5 * x.flatten(1).pow(2).sum(1) / s0**2 - 0.5 * 4 * math.log(2 * math.pi * s0**2)
        for hutchinson in (True, False):  # Rademacher probes are exact for a scalar Jacobian
            logp, _, _ = ode_likelihood(
                score, sde, x, eps=1e-5, hutchinson=hutchinson, rtol=1e-6, atol=1e-6
            )
            # p_eps differs from p_0 by the tiny noise at t = eps (and VE's prior mismatch)
            torch.testing.assert_close(logp, want, rtol=0, atol=2e-2)


def test_ode_sampling_reproduces_the_variance():
    sde, s0 = VPSDE(), 0.5
    x, _ = ode_sample(
        _gaussian_score(sde, s0),
        sde,
        (2000, 1),
        eps=1e-4,
        generator=torch.Generator().manual_seed(0),
    )
    assert abs(x.std().item() - s0) < 0.05
