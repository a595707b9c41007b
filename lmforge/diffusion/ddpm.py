"""DDPM ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models").

One step draws x_{t'} from the posterior q(x_{t'} | x_t, x̂_0) of eq. 6–7 with t' the next
inference timestep: mean μ̃ = (√ᾱ_{t'} β̃_t / (1 − ᾱ_t)) x̂_0 + (√α̃_t (1 − ᾱ_{t'}) / (1 − ᾱ_t)) x_t,
with α̃_t = ᾱ_t / ᾱ_{t'} and β̃_t = 1 − α̃_t, and variance either the posterior's
(1 − ᾱ_{t'}) / (1 − ᾱ_t) β̃_t ("fixed_small") or β̃_t ("fixed_large") — the two bounds of §3.2.
x̂_0 comes from an ε-, x_0- or v-prediction and may be clipped to ±``clip_sample_range``.
Config keys and numerics are diffusers' ``DDPMScheduler``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from lmforge.config import ConfigError
from lmforge.diffusion.noise_schedules import (
    BetaScheduleConfig,
    beta_tables,
    predict_x0_and_eps,
    spaced_timesteps,
)
from lmforge.diffusion.scheduler_base import Scheduler, broadcast_to

__all__ = ["DDPMConfig", "DDPMScheduler", "forward_noise"]


@dataclass
class DDPMConfig(BetaScheduleConfig):
    variance_type: Literal["fixed_small", "fixed_large"] = "fixed_small"
    clip_sample: bool = True
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"


def forward_noise(
    alphas_cumprod: torch.Tensor, original: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Ho et al. 2020, eq. 4), per-sample ``t``."""
    ab = alphas_cumprod.to(device=original.device, dtype=original.dtype)[t.to(original.device)]
    return (
        broadcast_to(ab**0.5, original) * original + broadcast_to((1 - ab) ** 0.5, original) * noise
    )


class DDPMScheduler(Scheduler):
    """Ancestral DDPM sampling; see the module docstring."""

    class_name = "DDPMScheduler"
    Config = DDPMConfig
    unsupported = ("thresholding",)

    def __init__(self, config: DDPMConfig | None = None, generator=None, **kwargs: Any):
        super().__init__(config, generator, **kwargs)
        c = self.config
        self.check(c, "DDPMScheduler")
        self.betas, self.alphas_cumprod = beta_tables(c)
        self.timesteps = torch.arange(c.num_train_timesteps - 1, -1, -1)

    @classmethod
    def check(cls, config: DDPMConfig, where: str) -> None:
        if config.variance_type not in ("fixed_small", "fixed_large"):
            raise ConfigError(
                f"{where}: variance_type={config.variance_type!r} is not implemented "
                "(fixed_small or fixed_large; learned variances need a 2C-channel model)"
            )

    def set_timesteps(self, num_inference_steps: int) -> None:
        c = self.config
        ts = spaced_timesteps(
            c.timestep_spacing, c.num_train_timesteps, num_inference_steps, c.steps_offset
        )
        self.timesteps = torch.from_numpy(ts)
        self.num_inference_steps = num_inference_steps
        self.step_index = None

    def previous_timestep(self, t: int) -> int:
        """The next timestep of the inference schedule (−1 after the last)."""
        if self.num_inference_steps is None:
            return t - 1
        i = self.index_of(t)
        return -1 if i == len(self.timesteps) - 1 else int(self.timesteps[i + 1])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.config
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        ab_t = self.alphas_cumprod[t]
        ab_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        beta_prod_t, beta_prod_prev = 1 - ab_t, 1 - ab_prev
        cur_alpha = ab_t / ab_prev
        cur_beta = 1 - cur_alpha
        x0, _ = predict_x0_and_eps(model_output, sample, ab_t, c.prediction_type)
        if c.clip_sample:
            x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        x0_coeff = (ab_prev ** (0.5) * cur_beta) / beta_prod_t
        xt_coeff = cur_alpha ** (0.5) * beta_prod_prev / beta_prod_t
        prev = x0_coeff * x0 + xt_coeff * sample
        if t > 0:
            if c.variance_type == "fixed_small":
                variance = torch.clamp(beta_prod_prev / beta_prod_t * cur_beta, min=1e-20)
            else:
                variance = cur_beta
            prev = prev + variance**0.5 * self.draw_noise(model_output, noise)
        return prev

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        return forward_noise(self.alphas_cumprod, original, noise, timesteps)
