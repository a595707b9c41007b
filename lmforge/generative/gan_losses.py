"""The two players' losses of the GAN family, as small pure functions of the critic's outputs.

Logits ``d_real = D(x)``, ``d_fake = D(G(z))`` (for the original GAN, D(x) = σ(logit)):

- ``gan`` — the minimax game (Goodfellow et al. 2014, eq. 1):
  D maximises E log D(x) + E log(1 − D(G(z))), i.e. minimises softplus(−d_real) + softplus(d_fake);
  G minimises E log(1 − D(G(z))) = −softplus(d_fake) (saturates when D wins early).
- ``nsgan`` — the same D, and the non-saturating G loss −E log D(G(z)) = softplus(−d_fake)
  (Goodfellow et al. 2014, §3, the heuristic used in practice).
- ``wgan`` — the Kantorovich–Rubinstein dual W₁(P_r, P_g) = sup_{‖f‖_L ≤ 1} E f(x) − E f(x̃)
  (Arjovsky et al. 2017, eq. 3): the critic minimises E f(x̃) − E f(x), G minimises −E f(x̃);
  the Lipschitz constraint by clipping the critic's weights to [−c, c] (`clip_weights`).
- ``wgan-gp`` — the WGAN losses with the gradient penalty λ E (‖∇_x̂ f(x̂)‖₂ − 1)² on random
  interpolates x̂ = ε x + (1 − ε) x̃, ε ~ U[0, 1] (Gulrajani et al. 2017, eq. 3 / Alg. 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GAN_METHODS = ("gan", "nsgan", "wgan", "wgan-gp")

__all__ = [
    "GAN_METHODS",
    "clip_weights",
    "critic_loss",
    "generator_loss",
    "gradient_penalty",
    "interpolate",
    "wasserstein_estimate",
]


def critic_loss(method: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's / critic's loss, a mean over the batch (module docstring)."""
    if method in ("gan", "nsgan"):
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if method in ("wgan", "wgan-gp"):
        return d_fake.mean() - d_real.mean()
    raise ValueError(f"GAN method {method!r}: expected one of {', '.join(GAN_METHODS)}")


def generator_loss(method: str, d_fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss on the critic's logits of its samples (module docstring)."""
    if method == "gan":
        return -F.softplus(d_fake).mean()  # E log(1 − σ(l)), minimised
    if method == "nsgan":
        return F.softplus(-d_fake).mean()  # −E log σ(l)
    if method in ("wgan", "wgan-gp"):
        return -d_fake.mean()
    raise ValueError(f"GAN method {method!r}: expected one of {', '.join(GAN_METHODS)}")


def wasserstein_estimate(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """E f(x) − E f(x̃): the critic's estimate of W₁ (up to its Lipschitz constant)."""
    return d_real.mean() - d_fake.mean()


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x̂ = ε x + (1 − ε) x̃ with one ε per example (``eps``: [B], broadcast over the rest)."""
    eps = eps.to(real.dtype).view(-1, *([1] * (real.dim() - 1)))
    return eps * real + (1 - eps) * fake


def gradient_penalty(
    critic: Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    eps: torch.Tensor,
    weight: float = 10.0,
    **critic_kwargs: torch.Tensor,
) -> torch.Tensor:
    """λ · mean_i (‖∇_x̂ f(x̂_i)‖₂ − 1)² (Gulrajani et al. 2017, eq. 3), differentiable in the
    critic's parameters (``create_graph``); ``critic_kwargs`` (e.g. labels) go to the critic."""
    x_hat = interpolate(real.detach(), fake.detach(), eps).requires_grad_(True)
    scores = critic(x_hat, **critic_kwargs)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return weight * (norms - 1).pow(2).mean()


@torch.no_grad()
def clip_weights(module: nn.Module, clip_value: float) -> None:
    """Clamp every parameter of the critic to [−c, c] (Arjovsky et al. 2017, Alg. 1 line 7)."""
    for p in module.parameters():
        p.clamp_(-clip_value, clip_value)
