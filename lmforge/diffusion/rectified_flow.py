"""Rectified flow (Liu, Gong & Liu 2023, "Flow Straight and Fast"): reflow couplings,
straightness, one-step generation.

A flow model v(x_σ, σ) trained with the ``flow`` target (`lmforge.diffusion.targets`) moves
noise z (σ = 1) to data (σ = 0) along dx/dσ = v. *Reflow* (§2.2, Algorithm 1) samples pairs
(z, x̂ = ODE(z)) with the current model and trains again on the straight interpolations
between exactly those pairs (``DenoisingObjective`` with the batch's ``noise``); the new
flow's paths are straighter, so few Euler steps — down to one, x̂ = z − v(z, 1) — suffice.
Straightness (eq. 7): S = ∫₀¹ E‖(z − x̂) − v(x_σ, σ)‖² dσ, 0 for straight paths; estimated
here along the Euler trajectory, per dimension.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.diffusion.flow_match import FlowMatchEulerScheduler
from lmforge.diffusion.sampling import guided_output
from lmforge.vision.datasets import ImageDataset
from lmforge.vision.loader import ImageLoader

__all__ = ["flow_trajectory", "reflow_loader", "reflow_pairs", "straightness"]


@torch.no_grad()
def flow_trajectory(
    model: nn.Module,
    noise: torch.Tensor,
    steps: int,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    scheduler: FlowMatchEulerScheduler | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Euler-integrate from ``noise`` (σ = 1) to σ = 0; returns (x̂, velocities per step)."""
    sched = scheduler or FlowMatchEulerScheduler()
    sched.set_timesteps(steps)
    x, velocities = noise, []
    for t in sched.timesteps:
        v = guided_output(model, x, t, labels, guidance_scale)
        velocities.append(v)
        x = sched.step(v, t, x)
    return x, velocities


def straightness(
    noise: torch.Tensor, sample: torch.Tensor, velocities: list[torch.Tensor]
) -> float:
    """Mean over steps and dimensions of ‖(z − x̂) − v_k‖² (Liu et al. 2023, eq. 7)."""
    direction = noise - sample
    return float(torch.stack([(direction - v).pow(2).mean() for v in velocities]).mean())


@torch.no_grad()
def reflow_pairs(
    model: nn.Module,
    num: int,
    shape: tuple[int, int, int],
    steps: int,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` couplings (z, x̂ = ODE_model(z)) for reflow (Liu et al. 2023, Algorithm 1)."""
    model.eval()
    device = next(model.parameters()).device
    noise = torch.randn((num, *shape), generator=generator)
    samples = []
    for i in range(0, num, batch_size):
        z = noise[i : i + batch_size].to(device)
        y = None if labels is None else labels[i : i + batch_size].to(device)
        samples.append(flow_trajectory(model, z, steps, y, guidance_scale)[0].cpu())
    return noise, torch.cat(samples)


def reflow_loader(
    noise: torch.Tensor,
    samples: torch.Tensor,
    labels: torch.Tensor | None,
    batch_size: int,
    seed: int = 0,
) -> ImageLoader:
    """A Trainer loader of ``{"images": x̂, "noise": z, "labels"}`` pairs."""
    if labels is None:
        labels = torch.zeros(len(samples), dtype=torch.long)
    data = ImageDataset("reflow", samples, labels, [])
    return ImageLoader(data, batch_size, seed, extras={"noise": noise})
