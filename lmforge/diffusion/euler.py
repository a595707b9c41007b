"""Euler sampling of the probability-flow ODE in σ (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", Algorithm 1 without churn).

With x = x_0 + σ ε (the variance-exploding view, σ = √((1−ᾱ)/ᾱ)), the ODE is
dx/dσ = (x − x̂_0(x, σ)) / σ (eq. 3 with σ(t) = t); one Euler step goes from σ_i to σ_{i+1}.
The network sees x / √(σ² + 1) (the DDPM-scaled input, ``scale_model_input``) and the
fractional training timestep of σ. ``use_karras_sigmas`` spaces σ by eq. 5 (ρ = 7).
Config keys and numerics are diffusers' ``EulerDiscreteScheduler``'s (deterministic: no
churn, so ``noise`` is unused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmforge.config import ConfigError
from lmforge.diffusion.noise_schedules import (
    BetaScheduleConfig,
    beta_tables,
    karras_sigmas,
    sigma_to_t,
    spaced_timesteps,
)
from lmforge.diffusion.scheduler_base import Scheduler, broadcast_to

__all__ = ["EulerConfig", "EulerScheduler"]


@dataclass
class EulerConfig(BetaScheduleConfig):
    interpolation_type: str = "linear"
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    sigma_min: float | None = None
    sigma_max: float | None = None
    timestep_spacing: str = "linspace"
    timestep_type: str = "discrete"
    final_sigmas_type: str = "zero"


class EulerScheduler(Scheduler):
    """Euler steps in σ; see the module docstring."""

    class_name = "EulerDiscreteScheduler"
    Config = EulerConfig
    unsupported = ("use_exponential_sigmas", "use_beta_sigmas", "timestep_type")

    def __init__(self, config: EulerConfig | None = None, generator=None, **kwargs: Any):
        super().__init__(config, generator, **kwargs)
        c = self.config
        self.check(c, "EulerDiscreteScheduler")
        self.betas, self.alphas_cumprod = beta_tables(c)
        if c.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # keep σ_T finite (as diffusers does)
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).flip(0)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self.timesteps = (
            torch.linspace(0, c.num_train_timesteps - 1, c.num_train_timesteps, dtype=torch.float64)
            .flip(0)
            .float()
        )

    @classmethod
    def check(cls, config: EulerConfig, where: str) -> None:
        if config.interpolation_type not in ("linear", "log_linear"):
            raise ConfigError(f"{where}: interpolation_type {config.interpolation_type!r}")
        if config.final_sigmas_type not in ("zero", "sigma_min"):
            raise ConfigError(f"{where}: final_sigmas_type {config.final_sigmas_type!r}")

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        top = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return top
        return (top**2 + 1) ** 0.5

    def set_timesteps(self, num_inference_steps: int) -> None:
        c = self.config
        ts = spaced_timesteps(
            c.timestep_spacing,
            c.num_train_timesteps,
            num_inference_steps,
            c.steps_offset,
            dtype=np.float32,
        )
        base = np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5)
        log_sigmas = np.log(base)
        if c.interpolation_type == "linear":
            sigmas = np.interp(ts, np.arange(0, len(base)), base)
        else:
            sigmas = (
                torch.linspace(np.log(base[-1]), np.log(base[0]), num_inference_steps + 1)
                .exp()
                .numpy()
            )
        if c.use_karras_sigmas:
            lo = c.sigma_min if c.sigma_min is not None else sigmas[-1].item()
            hi = c.sigma_max if c.sigma_max is not None else sigmas[0].item()
            sigmas = karras_sigmas(lo, hi, num_inference_steps)
            ts = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
        last = base[0] if c.final_sigmas_type == "sigma_min" else 0
        sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(ts.astype(np.float32))
        self.num_inference_steps = num_inference_steps
        self.step_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        sigma = self.sigmas[self.begin_step(timestep)]
        return sample / ((sigma**2 + 1) ** 0.5)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        i = self.begin_step(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[i]
        kind = self.config.prediction_type
        if kind in ("sample", "original_sample"):
            x0 = model_output
        elif kind == "epsilon":
            x0 = sample - sigma * model_output
        elif kind == "v_prediction":
            x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        else:
            raise ConfigError(f"prediction_type {kind!r}: expected epsilon, sample or v_prediction")
        derivative = (sample - x0) / sigma
        prev = sample + derivative * (self.sigmas[i + 1] - sigma)
        self.step_index = i + 1
        return prev.to(model_output.dtype)

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x = x_0 + σ(t) ε at inference timesteps ``timesteps`` (of ``self.timesteps``)."""
        idx = [self.index_of(t) for t in timesteps.flatten()]
        sigma = self.sigmas.to(original.device, original.dtype)[idx]
        return original + noise * broadcast_to(sigma, original)
