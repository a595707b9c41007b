"""Rotary position embeddings (RoFormer, Su et al. 2021) with linear, Llama-3 and YaRN scaling.

Half-split layout (rotate the two halves of each head), as Llama / Qwen / Mistral
checkpoints expect.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _base_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """θ_i = theta^(-2i/d), i = 0 … d/2-1 — eq. (15) of arXiv:2104.09864."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, p: dict[str, Any], max_pos: int) -> torch.Tensor:
    """Llama 3.1 frequency scaling: keep high frequencies, divide low ones by ``factor``,
    and interpolate smoothly between the two wavelength bands."""
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_ctx = p.get("original_max_position_embeddings") or max_pos
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def _yarn_inv_freq(dim: int, theta: float, p: dict[str, Any], max_pos: int):
    """YaRN (Peng et al. 2023, arXiv:2309.00071): NTK-by-parts interpolation, eq. (18)-(20),
    and the attention temperature √(1/t) = 0.1·ln(s) + 1, eq. (22)."""
    old_ctx = p.get("original_max_position_embeddings") or max_pos
    factor = p.get("factor") or max_pos / old_ctx

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(old_ctx / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1.0 - ramp  # 1 → keep the original frequency, 0 → interpolate
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv, float(attention_factor)


def rope_frequencies(
    head_dim: int, theta: float, scaling: dict[str, Any] | None = None, max_positions: int = 2048
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[head_dim/2]`` and the cos/sin multiplier for a RoPE variant."""
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "default":
        return _base_inv_freq(head_dim, theta), 1.0
    if rope_type == "linear":
        return _base_inv_freq(head_dim, theta) / scaling["factor"], 1.0
    if rope_type == "llama3":
        return _llama3_inv_freq(_base_inv_freq(head_dim, theta), scaling, max_positions), 1.0
    if rope_type == "yarn":
        return _yarn_inv_freq(head_dim, theta, scaling, max_positions)
    raise ValueError(f"unsupported rope_type {rope_type!r}")


class RotaryEmbedding(nn.Module):
    """Maps position ids ``[B, T]`` to (cos, sin) tables ``[B, T, head_dim]`` in the input dtype."""

    def __init__(
        self,
        head_dim: int,
        theta: float = 10000.0,
        scaling: dict[str, Any] | None = None,
        max_positions: int = 2048,
    ) -> None:
        super().__init__()
        # computed on the CPU whatever the default device (on "meta" the arithmetic would run
        # through torch's reference kernels), then placed on the default device
        with torch.device("cpu"):
            inv_freq, self.attention_scaling = rope_frequencies(
                head_dim, theta, scaling, max_positions
            )
        self.register_buffer("inv_freq", inv_freq.to(torch.get_default_device()), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # `model.to(bfloat16)` would round the frequencies; keep them fp32 (move device only).
        exact = self.inv_freq
        super()._apply(fn, recurse)
        self.inv_freq = exact.to(self.inv_freq.device)
        return self

    @torch.no_grad()
    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device_type = position_ids.device.type
        with torch.autocast(
            device_type=device_type if device_type != "mps" else "cpu", enabled=False
        ):
            freqs = position_ids[..., None].float() * self.inv_freq.float()
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * self.attention_scaling
            sin = emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q``/``k`` ``[B, H, T, D]`` by position: x·cos + rotate_half(x)·sin."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return rotate(q, cos, sin), rotate(k, cos, sin)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, eq. (34) of arXiv:2104.09864 in the half-split layout;
    ``cos``/``sin`` broadcast against ``x`` (``[..., head_dim]``)."""
    return x * cos + _rotate_half(x) * sin


class MultimodalRotaryEmbedding(RotaryEmbedding):
    """M-RoPE (Qwen2-VL, Wang et al. 2024, arXiv:2409.12191 §2.1): each position has three
    components (temporal, height, width); the head's ``head_dim/2`` frequencies are cut into
    ``mrope_section`` = [s_t, s_h, s_w] consecutive bands, and band i turns with component
    i. Position ids ``[3, B, T]`` (``[B, T]`` = the same id on all three axes, which
    reduces to plain RoPE) → cos/sin ``[B, T, head_dim]``."""

    def __init__(
        self,
        head_dim: int,
        mrope_section: list[int],
        theta: float = 10000.0,
        scaling: dict[str, Any] | None = None,
        max_positions: int = 2048,
    ) -> None:
        super().__init__(head_dim, theta, scaling, max_positions)
        if sum(mrope_section) != head_dim // 2 or len(mrope_section) != 3:
            raise ValueError(
                f"mrope_section={mrope_section} must be three bands summing to head_dim/2="
                f"{head_dim // 2}"
            )
        self.mrope_section = list(mrope_section)

    @torch.no_grad()
    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        device_type = position_ids.device.type
        with torch.autocast(
            device_type=device_type if device_type != "mps" else "cpu", enabled=False
        ):
            freqs = position_ids[..., None].float() * self.inv_freq.float()  # [3, B, T, D/2]
            bands = freqs.split(self.mrope_section, dim=-1)
            freqs = torch.cat([band[i] for i, band in enumerate(bands)], dim=-1)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * self.attention_scaling
            sin = emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)
