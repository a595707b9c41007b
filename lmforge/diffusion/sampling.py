"""Sampling a denoiser with any scheduler, with classifier-free guidance.

    images = sample_images(model, load_scheduler("ddim", base=train_sched), 50,
                           labels=torch.arange(10), shape=(1, 16, 16), guidance_scale=3.0)

Guidance (Ho & Salimans 2022, eq. 6): ε̃ = ε(x, ∅) + w (ε(x, y) − ε(x, ∅)) — applied to
whatever the network predicts (ε, v, x_0 or velocity; the combination is affine in each).
w = 1 is plain conditional sampling (one network call per step).
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.diffusion.scheduler_base import Scheduler

__all__ = ["cfg_combine", "guided_output", "sample_images"]


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """ε̃ = ε(x, ∅) + w (ε(x, y) − ε(x, ∅)) (Ho & Salimans 2022, eq. 6)."""
    return uncond + guidance_scale * (cond - uncond)


def guided_output(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """The network output at (x, t), guided toward ``labels`` with scale ``guidance_scale``."""
    tt = torch.as_tensor(t, device=x.device).expand(x.shape[0])
    if labels is None or guidance_scale == 1.0:
        return model(x, tt, labels)
    null = torch.full_like(labels, model.null_class)
    both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null]))
    cond, uncond = both.chunk(2)
    return cfg_combine(cond, uncond, guidance_scale)


@torch.no_grad()
def sample_images(
    model: nn.Module,
    scheduler: Scheduler,
    num_steps: int,
    *,
    labels: torch.Tensor | None = None,
    num: int | None = None,
    shape: tuple[int, int, int],
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``num`` (or ``len(labels)``) images from pure noise through ``scheduler``'s steps;
    stochastic samplers draw their noise from ``generator`` too."""
    was_training = model.training
    model.eval()
    n = len(labels) if labels is not None else num
    if n is None:
        raise ValueError("give labels or num")
    device = next(model.parameters()).device
    if labels is not None:
        labels = labels.to(device)
    scheduler.generator = generator
    scheduler.set_timesteps(num_steps)
    x = torch.randn((n, *shape), generator=generator) * scheduler.init_noise_sigma
    x = x.to(device)
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        out = guided_output(model, inp, t.to(device), labels, guidance_scale)
        x = scheduler.step(out, t, x)
    model.train(was_training)
    return x.clamp(-1, 1)
