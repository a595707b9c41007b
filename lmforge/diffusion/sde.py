"""Score-based generative modelling with SDEs (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations").

A forward SDE dx = f(x, t) dt + g(t) dw, t ∈ [0, 1], with Gaussian marginals
p_t(x | x_0) = N(m(t) x_0, s(t)² I):

- VP (eq. 11, DDPM's limit): f = −½β(t) x, g = √β(t), β(t) = β_min + t (β_max − β_min);
  m = exp(−¼t²(β_max − β_min) − ½t β_min), s² = 1 − m²;
- sub-VP (eq. 12): same f, g² = β(t)(1 − e^{−2∫β}), s = 1 − m²;
- VE (eq. 9, SMLD's limit): f = 0, σ(t) = σ_min (σ_max/σ_min)^t, g = σ(t) √(2 log(σ_max/σ_min)),
  m = 1, s = σ(t).

A score model s_θ(x, t) ≈ ∇ log p_t is trained by denoising score matching (eq. 7, λ = s²):
E‖s(t) s_θ(x_t, t) + z‖². Sampling integrates the reverse SDE dx = [f − g² ∇log p] dt + g dw̄
(eq. 6) with Euler–Maruyama, optionally with Langevin corrector steps (predictor–corrector,
Algorithms 1–3 with the signal-to-noise step rule); the probability-flow ODE
dx/dt = f − ½ g² ∇log p (eq. 13) is in `lmforge.diffusion.pf_ode`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "SDE",
    "ScoreFn",
    "SubVPSDE",
    "VESDE",
    "VPSDE",
    "dsm_loss",
    "euler_maruyama",
    "predictor_corrector",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _b(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


class SDE:
    """Base class: drift/diffusion, the Gaussian marginal, the prior at t = 1."""

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m(t), s(t)) of p_t(x | x_0) = N(m x_0, s² I)."""
        raise NotImplementedError

    def prior_std(self) -> float:
        return 1.0

    def prior_sample(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64) * self.prior_std()

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, σ_T² I) per example."""
        d = z[0].numel()
        var = self.prior_std() ** 2
        return -0.5 * z.flatten(1).pow(2).sum(1) / var - 0.5 * d * math.log(2 * math.pi * var)

    def reverse_drift(self, x, t, score: ScoreFn, ode: bool = False) -> torch.Tensor:
        """f − g² ∇log p (reverse SDE, eq. 6) or f − ½ g² ∇log p (PF ODE, eq. 13)."""
        g2 = _b(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - (0.5 if ode else 1.0) * g2 * score(x, t)


class VPSDE(SDE):
    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min, self.beta_max = beta_min, beta_max

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def drift(self, x, t):
        return -0.5 * _b(self.beta(t), x) * x

    def diffusion(self, t):
        return self.beta(t).sqrt()

    def log_mean(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal(self, t):
        m = torch.exp(self.log_mean(t))
        return m, (1 - m**2).sqrt()


class SubVPSDE(VPSDE):
    def diffusion(self, t):
        integral = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        return (self.beta(t) * (1 - torch.exp(-2 * integral))).sqrt()

    def marginal(self, t):
        m = torch.exp(self.log_mean(t))
        return m, 1 - m**2


class VESDE(SDE):
    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift(self, x, t):
        return torch.zeros_like(x)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def marginal(self, t):
        return torch.ones_like(t), self.sigma(t)

    def prior_std(self) -> float:
        return self.sigma_max


def dsm_loss(score: ScoreFn, sde: SDE, x0: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-example denoising score matching with λ(t) = s(t)² (eq. 7):
    ‖s(t) s_θ(x_t, t) + z‖² summed over dimensions, t ~ U(eps, 1)."""
    t = torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device) * (1 - eps) + eps
    z = torch.randn_like(x0)
    m, s = sde.marginal(t)
    xt = _b(m, x0) * x0 + _b(s, x0) * z
    return (_b(s, x0) * score(xt, t) + z).flatten(1).pow(2).sum(1)


@torch.no_grad()
def euler_maruyama(
    score: ScoreFn,
    sde: SDE,
    shape,
    steps: int,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    denoise: bool = True,
) -> torch.Tensor:
    """Reverse-SDE Euler–Maruyama from the prior at t = 1 to t = eps (eq. 6)."""
    x = sde.prior_sample(shape, generator)
    ts = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    for i in range(steps):
        t, dt = ts[i].expand(shape[0]), float(ts[i + 1] - ts[i])  # dt < 0
        drift = sde.reverse_drift(x, t, score)
        x_mean = x + drift * dt
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
        x = x_mean + _b(sde.diffusion(t), x) * math.sqrt(-dt) * z
    return x_mean if denoise else x


@torch.no_grad()
def predictor_corrector(
    score: ScoreFn,
    sde: SDE,
    shape,
    steps: int,
    corrector_steps: int = 1,
    snr: float = 0.16,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Predictor–corrector sampling (Algorithm 1): each step, ``corrector_steps`` Langevin
    moves x ← x + ε ∇log p + √(2ε) z with ε = 2 (snr ‖z‖ / ‖∇log p‖)² (App. G), then a
    reverse-diffusion Euler–Maruyama predictor step."""
    x = sde.prior_sample(shape, generator)
    ts = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    x_mean = x
    for i in range(steps):
        t, dt = ts[i].expand(shape[0]), float(ts[i + 1] - ts[i])
        for _ in range(corrector_steps):
            grad = score(x, t)
            z = torch.randn(shape, generator=generator, dtype=torch.float64)
            g_norm = grad.flatten(1).norm(dim=1).mean()
            z_norm = z.flatten(1).norm(dim=1).mean()
            step = 2 * (snr * z_norm / g_norm) ** 2
            x = x + step * grad + (2 * step).sqrt() * z
        drift = sde.reverse_drift(x, t, score)
        x_mean = x + drift * dt
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
        x = x_mean + _b(sde.diffusion(t), x) * math.sqrt(-dt) * z
    return x_mean
