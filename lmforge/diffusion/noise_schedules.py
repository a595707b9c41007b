"""Discrete noise schedules shared by the samplers: β tables, ᾱ, σ, timestep spacings.

The forward process of DDPM (Ho et al. 2020, eq. 4) is ``q(x_t | x_0) = N(√ᾱ_t x_0,
(1 − ᾱ_t) I)`` with ``ᾱ_t = Π_{s ≤ t} (1 − β_s)``; the variance-exploding view of the same
chain (Karras et al. 2022, §2) uses ``σ_t = √((1 − ᾱ_t) / ᾱ_t)`` and ``x = x_0 + σ ε``. The
tables are float32 torch tensors computed in the same order of operations as diffusers so
that samplers agree with it to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lmforge.config import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("linspace", "leading", "trailing")

__all__ = [
    "BETA_SCHEDULES",
    "BetaScheduleConfig",
    "SPACINGS",
    "alphas_cumprod_from_betas",
    "beta_tables",
    "cosine_betas",
    "karras_sigmas",
    "make_betas",
    "predict_x0_and_eps",
    "rescale_zero_terminal_snr",
    "sigma_to_t",
    "spaced_timesteps",
]


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """β from the squared-cosine ᾱ(t) of Nichol & Dhariwal 2021, eq. 17 (s = 0.008)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ so that ᾱ_T = 0 (Lin et al. 2024, "Common diffusion noise schedules
    and sample steps are flawed", Algorithm 1)."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab**2
    alphas = torch.cat([ab[0:1], ab[1:] / ab[:-1]])
    return 1 - alphas


def make_betas(
    schedule: str,
    num_steps: int,
    beta_start: float,
    beta_end: float,
    trained_betas: list[float] | None = None,
    rescale_zero_snr: bool = False,
) -> torch.Tensor:
    """The β table: ``linear`` (Ho et al. 2020), ``scaled_linear`` (linear in √β, Stable
    Diffusion), ``squaredcos_cap_v2`` (`cosine_betas`), or ``trained_betas`` as given."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = cosine_betas(num_steps)
    else:
        raise ConfigError(
            f"beta_schedule {schedule!r}: expected one of {', '.join(BETA_SCHEDULES)}"
        )
    if rescale_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = Π_{s ≤ t} (1 − β_s) (Ho et al. 2020, §2)."""
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass
class BetaScheduleConfig:
    """The config keys every β-table sampler shares (DDPM, DDIM, Euler, DPM-Solver), with
    diffusers' names and defaults; each sampler's config extends it with its own keys."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: list[float] | None = None
    prediction_type: str = "epsilon"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False


def beta_tables(config: BetaScheduleConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(β, ᾱ)`` of a sampler config (`make_betas`, `alphas_cumprod_from_betas`)."""
    c = config
    betas = make_betas(
        c.beta_schedule,
        c.num_train_timesteps,
        c.beta_start,
        c.beta_end,
        c.trained_betas,
        c.rescale_betas_zero_snr,
    )
    return betas, alphas_cumprod_from_betas(betas)


def spaced_timesteps(
    spacing: str, num_train: int, num_steps: int, steps_offset: int = 0, dtype=np.int64
) -> np.ndarray:
    """Descending inference timesteps (Lin et al. 2024, Table 2): ``linspace`` (both ends),
    ``leading`` (multiples of ⌊T/n⌋ from 0, plus ``steps_offset``), ``trailing`` (from T−1)."""
    if num_steps < 1 or num_steps > num_train:
        raise ValueError(f"num_inference_steps={num_steps}: must be in 1..{num_train}")
    if spacing == "linspace":
        ts = np.linspace(
            0, num_train - 1, num_steps, dtype=np.float64 if dtype == np.int64 else dtype
        )
        if dtype == np.int64:
            ts = ts.round()
        return ts[::-1].copy().astype(dtype)
    if spacing == "leading":
        ratio = num_train // num_steps
        ts = (np.arange(0, num_steps) * ratio).round()[::-1].copy().astype(dtype)
        return ts + steps_offset
    if spacing == "trailing":
        ratio = num_train / num_steps
        ts = np.round(np.arange(num_train, 0, -ratio)).astype(dtype)
        return ts - 1
    raise ConfigError(f"timestep_spacing {spacing!r}: expected one of {', '.join(SPACINGS)}")


def karras_sigmas(
    sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0
) -> np.ndarray:
    """σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ (Karras et al. 2022, eq. 5)."""
    ramp = np.linspace(0, 1, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigma: float | np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training timestep whose σ is ``sigma``: linear interpolation in log σ
    between the two neighbouring entries of the (ascending) ``log_sigmas`` table."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def predict_x0_and_eps(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod: torch.Tensor,
    prediction_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂_0, ε̂)`` from a network output at ᾱ_t: ε-prediction (Ho et al. 2020, eq. 15:
    x̂_0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ), x_0-prediction (``sample``), or v-prediction
    (Salimans & Ho 2022, §4: v = √ᾱ ε − √(1−ᾱ) x_0, so x̂_0 = √ᾱ x_t − √(1−ᾱ) v)."""
    beta_prod = 1 - alpha_prod
    if prediction_type == "epsilon":
        x0 = (sample - beta_prod ** (0.5) * model_output) / alpha_prod ** (0.5)
        eps = model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - alpha_prod ** (0.5) * x0) / beta_prod ** (0.5)
    elif prediction_type == "v_prediction":
        x0 = (alpha_prod**0.5) * sample - (beta_prod**0.5) * model_output
        eps = (alpha_prod**0.5) * model_output + (beta_prod**0.5) * sample
    else:
        raise ConfigError(
            f"prediction_type {prediction_type!r}: expected epsilon, sample or v_prediction"
        )
    return x0, eps
