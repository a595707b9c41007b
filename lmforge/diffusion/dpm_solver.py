"""DPM-Solver++ (2M) multistep sampling (Lu et al. 2022, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models").

In the half-log-SNR λ = log(α/σ), the data-prediction ODE has the exact solution of eq. 9;
with x̂_0 held constant over a step it gives the first-order update (= DDIM)
x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x̂_0(s), h = λ_t − λ_s. The 2M update (Algorithm 2)
adds a finite-difference correction from the previous step's x̂_0:
D1 = (x̂_0(s0) − x̂_0(s1)) / r0 with r0 = h_{prev} / h, weighted ½ ("midpoint") or by
(e^{−h} − 1)/h + 1 ("heun"). ``sde-dpmsolver++`` adds noise (the SDE variant, eq. 15
of Lu et al.'s appendix); the last step(s) drop to first order (``lower_order_final``).
Config keys and numerics are diffusers' ``DPMSolverMultistepScheduler``'s (orders 1–2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmforge.config import ConfigError
from lmforge.diffusion.ddpm import forward_noise
from lmforge.diffusion.noise_schedules import (
    BetaScheduleConfig,
    beta_tables,
    karras_sigmas,
    sigma_to_t,
)
from lmforge.diffusion.scheduler_base import Scheduler

__all__ = ["DPMSolverConfig", "DPMSolverScheduler", "vp_alpha_sigma"]


@dataclass
class DPMSolverConfig(BetaScheduleConfig):
    solver_order: int = 2
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_lu_lambdas: bool = False
    use_flow_sigmas: bool = False
    flow_shift: float = 1.0
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -float("inf")
    variance_type: str | None = None
    timestep_spacing: str = "linspace"
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"


def vp_alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) of the variance-preserving process from the VE σ = σ_t/α_t."""
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha, sigma * alpha


class DPMSolverScheduler(Scheduler):
    """DPM-Solver++ 1S/2M; see the module docstring."""

    class_name = "DPMSolverMultistepScheduler"
    Config = DPMSolverConfig
    unsupported = (
        "thresholding",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "use_lu_lambdas",
        "use_flow_sigmas",
        "variance_type",
        "use_dynamic_shifting",
    )

    def __init__(self, config: DPMSolverConfig | None = None, generator=None, **kwargs: Any):
        super().__init__(config, generator, **kwargs)
        c = self.config
        self.check(c, "DPMSolverMultistepScheduler")
        self.betas, self.alphas_cumprod = beta_tables(c)
        if c.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24
        alpha_t, sigma_t = torch.sqrt(self.alphas_cumprod), torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.model_outputs: list[torch.Tensor | None] = [None] * c.solver_order
        self.lower_order_nums = 0

    @classmethod
    def check(cls, config: DPMSolverConfig, where: str) -> None:
        if config.solver_order not in (1, 2):
            raise ConfigError(f"{where}: solver_order={config.solver_order} (1 or 2 here)")
        if config.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++"):
            raise ConfigError(
                f"{where}: algorithm_type={config.algorithm_type!r} (dpmsolver++ or sde-dpmsolver++)"
            )
        if config.solver_type not in ("midpoint", "heun"):
            raise ConfigError(f"{where}: solver_type={config.solver_type!r} (midpoint or heun)")
        if config.final_sigmas_type not in ("zero", "sigma_min"):
            raise ConfigError(f"{where}: final_sigmas_type {config.final_sigmas_type!r}")

    def set_timesteps(self, num_inference_steps: int) -> None:
        c, n = self.config, num_inference_steps
        clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), c.lambda_min_clipped)
        last = int((c.num_train_timesteps - clipped).item())
        if c.timestep_spacing == "linspace":
            ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif c.timestep_spacing == "leading":
            ratio = last // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
            ts += c.steps_offset
        elif c.timestep_spacing == "trailing":
            ratio = c.num_train_timesteps / n
            ts = np.arange(last, 0, -ratio).round().copy().astype(np.int64) - 1
        else:
            raise ConfigError(f"timestep_spacing {c.timestep_spacing!r}")
        base = np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5)
        log_sigmas = np.log(base)
        if c.use_karras_sigmas:
            flipped = np.flip(base).copy()
            lo = flipped[-1].item()
            hi = flipped[0].item()
            sigmas = karras_sigmas(lo, hi, n)
            ts = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
            if c.beta_schedule != "squaredcos_cap_v2":
                ts = ts.round()
        else:
            sigmas = np.interp(ts, np.arange(0, len(base)), base)
        last_sigma = base[0] if c.final_sigmas_type == "sigma_min" else 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last_sigma]]).astype(np.float32))
        self.timesteps = torch.from_numpy(ts).to(torch.int64)
        self.num_inference_steps = len(ts)
        self.model_outputs = [None] * c.solver_order
        self.lower_order_nums = 0
        self.step_index = None

    def index_of(self, timestep: Any) -> int:
        hits = (self.timesteps == torch.as_tensor(timestep).to(self.timesteps.dtype)).nonzero()
        if len(hits) == 0:
            return len(self.timesteps) - 1
        return int(hits[1 if len(hits) > 1 else 0].item())

    def data_prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x̂_0 at the current σ from an ε-, x_0- or v-prediction."""
        kind = self.config.prediction_type
        if kind == "sample":
            return model_output
        alpha, sigma = vp_alpha_sigma(self.sigmas[self.step_index])
        if kind == "epsilon":
            return (sample - sigma * model_output) / alpha
        if kind == "v_prediction":
            return alpha * sample - sigma * model_output
        raise ConfigError(f"prediction_type {kind!r}: expected epsilon, sample or v_prediction")

    def lambdas(self, *indices: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(α, σ, λ = log α − log σ) at step indices."""
        out = []
        for i in indices:
            alpha, sigma = vp_alpha_sigma(self.sigmas[i])
            out.append((alpha, sigma, torch.log(alpha) - torch.log(sigma)))
        return out

    def first_order(self, x0: torch.Tensor, sample: torch.Tensor, noise) -> torch.Tensor:
        i = self.step_index
        (alpha_t, sigma_t, lam_t), (_, sigma_s, lam_s) = self.lambdas(i + 1, i)
        h = lam_t - lam_s
        if self.config.algorithm_type == "dpmsolver++":
            return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * x0
        return (
            (sigma_t / sigma_s * torch.exp(-h)) * sample
            + (alpha_t * (1 - torch.exp(-2.0 * h))) * x0
            + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        )

    def second_order(self, sample: torch.Tensor, noise) -> torch.Tensor:
        i, c = self.step_index, self.config
        (alpha_t, sigma_t, lam_t), (_, sigma_s0, lam_s0), (_, _, lam_s1) = self.lambdas(
            i + 1, i, i - 1
        )
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
        r0 = h_0 / h
        d0, d1 = m0, (1.0 / r0) * (m0 - m1)
        if c.algorithm_type == "dpmsolver++":
            if c.solver_type == "midpoint":
                return (
                    (sigma_t / sigma_s0) * sample
                    - (alpha_t * (torch.exp(-h) - 1.0)) * d0
                    - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
                )
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (torch.exp(-h) - 1.0)) * d0
                + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
            )
        if c.solver_type == "midpoint":
            corr = 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))) * d1
        else:
            corr = (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
        return (
            (sigma_t / sigma_s0 * torch.exp(-h)) * sample
            + (alpha_t * (1 - torch.exp(-2.0 * h))) * d0
            + corr
            + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.config
        i = self.begin_step(timestep)
        n = len(self.timesteps)
        short = c.lower_order_final and n < 15
        final = i == n - 1 and (c.euler_at_final or short or c.final_sigmas_type == "zero")
        x0 = self.data_prediction(model_output, sample)
        self.model_outputs = [*self.model_outputs[1:], x0]
        sample = sample.to(torch.float32)
        if c.algorithm_type == "sde-dpmsolver++":
            noise = self.draw_noise(sample, noise).to(torch.float32)
        if c.solver_order == 1 or self.lower_order_nums < 1 or final:
            prev = self.first_order(x0, sample, noise)
        else:
            prev = self.second_order(sample, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.step_index = i + 1
        return prev.to(model_output.dtype)

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The VP forward process x_t = α_t x_0 + σ_t ε at training timesteps."""
        return forward_noise(self.alphas_cumprod, original, noise, timesteps)
