"""Euler sampling of a flow-matching / rectified-flow ODE (Lipman et al. 2023, "Flow
Matching for Generative Modeling"; Liu et al. 2023, "Flow Straight and Fast"; Esser et al.
2024, "Scaling Rectified Flow Transformers" for the timestep shift).

The path is x_σ = (1 − σ) x_0 + σ ε, σ from 1 (noise) to 0 (data); the network predicts the
velocity v = ε − x_0 = dx/dσ, and one step is x_{σ'} = x_σ + (σ' − σ) v. ``shift`` s warps
the schedule toward the noise end: σ ↦ s σ / (1 + (s − 1) σ) (Esser et al., eq. 23).
Timesteps given to the network are σ × ``num_train_timesteps``. Config keys and numerics are
diffusers' ``FlowMatchEulerDiscreteScheduler``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmforge.diffusion.scheduler_base import Scheduler, broadcast_to

__all__ = ["FlowMatchConfig", "FlowMatchEulerScheduler", "shift_sigmas"]


@dataclass
class FlowMatchConfig:
    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float | None = 0.5
    max_shift: float | None = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    invert_sigmas: bool = False
    shift_terminal: float | None = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    time_shift_type: str = "exponential"
    stochastic_sampling: bool = False


def shift_sigmas(sigmas, shift: float):
    """σ ↦ s σ / (1 + (s − 1) σ) (Esser et al. 2024, eq. 23)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowMatchEulerScheduler(Scheduler):
    """Euler steps on the velocity field; see the module docstring."""

    class_name = "FlowMatchEulerDiscreteScheduler"
    Config = FlowMatchConfig
    unsupported = (
        "use_dynamic_shifting",
        "invert_sigmas",
        "shift_terminal",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
    )

    def __init__(self, config: FlowMatchConfig | None = None, generator=None, **kwargs: Any):
        super().__init__(config, generator, **kwargs)
        c = self.config
        n = c.num_train_timesteps
        ts = torch.from_numpy(np.linspace(1, n, n, dtype=np.float32)[::-1].copy())
        sigmas = shift_sigmas(ts / n, c.shift)
        self.timesteps = sigmas * n
        self.sigmas = sigmas
        self.sigma_min = float(sigmas[-1])
        self.sigma_max = float(sigmas[0])

    def set_timesteps(self, num_inference_steps: int) -> None:
        c = self.config
        n = c.num_train_timesteps
        ts = np.linspace(self.sigma_max * n, self.sigma_min * n, num_inference_steps)
        sigmas = shift_sigmas(ts / n, c.shift)
        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32)
        self.timesteps = sigmas * n
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self.num_inference_steps = num_inference_steps
        self.step_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        i = self.begin_step(timestep)
        sample = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        if self.config.stochastic_sampling:
            x0 = sample - sigma * model_output
            prev = (1.0 - sigma_next) * x0 + sigma_next * self.draw_noise(sample, noise)
        else:
            prev = sample + (sigma_next - sigma) * model_output
        self.step_index = i + 1
        return prev.to(model_output.dtype)

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_σ = (1 − σ) x_0 + σ ε with σ = t / ``num_train_timesteps`` (continuous t)."""
        sigma = timesteps.to(original.device, original.dtype) / self.config.num_train_timesteps
        sigma = broadcast_to(sigma, original)
        return sigma * noise + (1.0 - sigma) * original
