"""Training targets and the denoising objective for the one Trainer.

A denoiser f(x_t, t, y) is trained by regression, ``Σ_batch mean_pixels (f − target)²``,
with count = batch size (so the Trainer's loss is the per-image mean squared error):

- ``epsilon``: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, target ε (Ho et al. 2020, eq. 14, L_simple);
- ``v_prediction``: target v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022, §4);
- ``sample``: target x_0;
- ``flow``: x_σ = (1 − σ) x_0 + σ ε with σ ~ U(0, 1) (optionally shifted, Esser et al. 2024
  eq. 23), target the velocity ε − x_0 (Lipman et al. 2023 eq. 23 with σ_min = 0; Liu et al.
  2023 eq. 1), network time σ·T.

Discrete targets draw t uniformly from {0, …, T−1}. Classifier-free guidance training
(Ho & Salimans 2022, Algorithm 1): each label is replaced by the "no class" id with
probability ``p_uncond``. Randomness comes from torch's global generator, which the
Trainer's checkpoints save, so a resumed run draws the same t and ε.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmforge.config import ConfigError
from lmforge.diffusion.ddpm import forward_noise
from lmforge.diffusion.flow_match import shift_sigmas
from lmforge.train.objective import LossOutput

TARGETS = ("epsilon", "v_prediction", "sample", "flow")

__all__ = ["TARGETS", "DenoisingObjective", "diffusion_target", "drop_labels"]


def diffusion_target(
    kind: str, x0: torch.Tensor, noise: torch.Tensor, alpha_prod: torch.Tensor
) -> torch.Tensor:
    """The regression target for a VP diffusion at ᾱ (``alpha_prod`` broadcastable to x0)."""
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return alpha_prod**0.5 * noise - (1 - alpha_prod) ** 0.5 * x0
    if kind == "sample":
        return x0
    raise ConfigError(f"target {kind!r}: expected one of {', '.join(TARGETS)}")


def drop_labels(labels: torch.Tensor, p_uncond: float, null_class: int) -> torch.Tensor:
    """Labels with each replaced by ``null_class`` with probability ``p_uncond``."""
    if p_uncond <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_class), labels)


class DenoisingObjective:
    """``objective(model, batch) -> LossOutput`` for ``{"images", "labels"}`` batches.

    Validation reports the per-image MSE (``val_loss``), not a perplexity
    (``validation_metrics``, read by the Trainer's `evaluate`)."""

    validation_metrics = True

    def __init__(
        self,
        target: str,
        alphas_cumprod: torch.Tensor | None = None,
        num_train_timesteps: int = 1000,
        p_uncond: float = 0.0,
        conditional: bool = True,
        flow_shift: float = 1.0,
    ) -> None:
        if target not in TARGETS:
            raise ConfigError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
        if target != "flow" and alphas_cumprod is None:
            raise ValueError(f"target {target!r} needs the noise schedule's alphas_cumprod")
        self.target = target
        self.alphas_cumprod = alphas_cumprod
        self.num_train_timesteps = num_train_timesteps
        self.p_uncond = p_uncond
        self.conditional = conditional
        self.flow_shift = flow_shift

    def noisy_input(self, x0: torch.Tensor, noise: torch.Tensor) -> tuple[Any, Any, Any]:
        """(x_t, network time, target) for a batch of clean images and noise."""
        b = x0.shape[0]
        if self.target == "flow":
            sigma = shift_sigmas(torch.rand(b, device=x0.device), self.flow_shift)
            s = sigma.view(-1, *([1] * (x0.dim() - 1)))
            return (1 - s) * x0 + s * noise, sigma * self.num_train_timesteps, noise - x0
        t = torch.randint(0, self.num_train_timesteps, (b,), device=x0.device)
        xt = forward_noise(self.alphas_cumprod, x0, noise, t)
        ab = self.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
        return xt, t, diffusion_target(self.target, x0, noise, ab)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        x0 = batch["images"]
        noise = batch["noise"] if "noise" in batch else torch.randn_like(x0)  # reflow: paired
        xt, t, target = self.noisy_input(x0, noise)
        labels = None
        if self.conditional:
            null = getattr(model, "null_class", None)
            if null is None:  # a wrapped model (DDP): the config says it
                null = model.module.null_class
            labels = drop_labels(batch["labels"], self.p_uncond, null)
        out = model(xt, t, labels)
        per_image = (out.float() - target.float()).pow(2).flatten(1).mean(1)
        return LossOutput(per_image.sum(), x0.shape[0])
