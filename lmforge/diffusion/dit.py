"""DiT: a diffusion transformer with adaLN-zero conditioning (Peebles & Xie 2023,
"Scalable Diffusion Models with Transformers").

x [B, C, H, W] → p×p patches linearly embedded (a stride-p conv) + fixed 2-D sin-cos
positions → N blocks → adaLN final layer → unpatchify to [B, C, H, W]. The condition
c = MLP(sinusoidal(t)) + class embedding (row ``num_classes`` = "no class" for guidance)
drives every block through adaLN-zero (§3.2): (shift, scale, gate) × 2 = Linear(SiLU(c)),
initialised to zero so each block starts as the identity:
x ← x + gate₁ · Attn(LN(x)(1 + scale₁) + shift₁);  x ← x + gate₂ · MLP(LN(x)(1 + scale₂) + shift₂).
The MLP is lmforge's `SwiGLU` block (`lmforge.nn.mlp`); attention is bidirectional
multi-head scaled dot-product attention.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.diffusion.unet import TimestepMLP, save_weights, timestep_embedding
from lmforge.nn.mlp import SwiGLU

__all__ = ["DiT", "DiTBlock", "DiTConfig", "sincos_positions_2d"]


@dataclass
class DiTConfig:
    sample_size: int = 16
    in_channels: int = 1
    out_channels: int = 1
    patch_size: int = 2
    hidden_size: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    num_classes: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sincos_positions_2d(dim: int, grid: int) -> torch.Tensor:
    """[grid², dim]: half the channels encode the row, half the column (MAE / DiT)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def enc(pos: torch.Tensor) -> torch.Tensor:
        out = pos.flatten()[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([enc(rows), enc(cols)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio), bias=True)
        self.ada_ln = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada_ln.weight)
        nn.init.zeros_(self.ada_ln.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.ada_ln(F.silu(c)).chunk(6, dim=1)
        x = x + g1[:, None] * self.attention(modulate(self.norm1(x), s1, sc1))
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), s2, sc2))


class DiT(nn.Module):
    """``forward(x, t, class_labels | None) → [B, C_out, H, W]`` (same interface as `UNet`)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.sample_size % c.patch_size:
            raise ValueError(f"sample_size {c.sample_size} is not a multiple of patch_size")
        if c.hidden_size % (4 * c.num_heads) and c.hidden_size % 4:
            raise ValueError("hidden_size must be divisible by 4 and by num_heads")
        self.grid = c.sample_size // c.patch_size
        d = c.hidden_size
        self.patch_embed = nn.Conv2d(c.in_channels, d, c.patch_size, stride=c.patch_size)
        self.register_buffer("pos", sincos_positions_2d(d, self.grid), persistent=False)
        self.time_embedding = TimestepMLP(d, d)
        self.class_embedding = (
            nn.Embedding(c.num_classes + 1, d) if c.num_classes is not None else None
        )
        self.blocks = nn.ModuleList(DiTBlock(d, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, c.patch_size**2 * c.out_channels)
        for layer in (self.ada_out, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_class(self) -> int | None:
        return self.config.num_classes

    def save_weights_folder(self, folder: str | os.PathLike) -> Path:
        return save_weights(self, "dit", folder)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        c, b = self.config, x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = (t[None] if t.dim() == 0 else t) * torch.ones(b, dtype=t.dtype, device=x.device)
        cond = self.time_embedding(timestep_embedding(t, c.hidden_size).to(x.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                class_labels = torch.full((b,), c.num_classes, device=x.device)
            cond = cond + self.class_embedding(class_labels)
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.ada_out(F.silu(cond)).chunk(2, dim=1)
        h = self.out(modulate(self.norm_out(h), shift, scale))  # [B, N, p·p·C]
        p, g = c.patch_size, self.grid
        h = h.view(b, g, g, p, p, c.out_channels).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, c.out_channels, g * p, g * p)

    @staticmethod
    def num_patches(config: DiTConfig) -> int:
        return (config.sample_size // config.patch_size) ** 2
