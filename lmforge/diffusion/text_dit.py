"""A text-conditioned DiT: adaLN-zero for the timestep, cross-attention to text-encoder
states for the caption (PixArt-α's block, Chen et al. 2023, §2.3; the cross-attention of
Rombach et al. 2022, eq. 3: Attention(Q, K, V) = softmax(QKᵀ/√d) V with Q = W_Q φ(z_t),
K = W_K τ(y), V = W_V τ(y)).

Each block: x ← x + gate₁ · SelfAttn(adaLN₁(x)); x ← x + CrossAttn(LN(x), context, mask);
x ← x + gate₂ · SwiGLU(adaLN₂(x)) (`lmforge.diffusion.dit.DiTBlock` for the adaLN parts).
Padding tokens of the context are masked out of every cross-attention row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.diffusion.dit import DiTBlock, modulate, sincos_positions_2d
from lmforge.diffusion.unet import TimestepMLP, timestep_embedding

__all__ = ["CrossAttention", "TextDiT", "TextDiTBlock", "TextDiTConfig"]


@dataclass
class TextDiTConfig:
    sample_size: int = 8
    in_channels: int = 4
    out_channels: int = 4
    patch_size: int = 1
    hidden_size: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    context_dim: int = 64

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CrossAttention(nn.Module):
    """Multi-head attention from queries ``x`` [B, N, D] to ``context`` [B, L, C]; ``mask``
    [B, L] (1 = attend, 0 = padding)."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TextDiTBlock(DiTBlock):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, context_dim: int) -> None:
        super().__init__(dim, heads, mlp_ratio)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, context_dim, heads)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.ada_ln(F.silu(c)).chunk(6, dim=1)
        x = x + g1[:, None] * self.attention(modulate(self.norm1(x), s1, sc1))
        x = x + self.cross(self.norm_cross(x), context, mask)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), s2, sc2))


class TextDiT(nn.Module):
    """``forward(x, t, context, context_mask) → [B, C_out, H, W]``."""

    def __init__(self, config: TextDiTConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.sample_size % c.patch_size or c.hidden_size % (4 * c.num_heads):
            raise ValueError(
                "TextDiT: sample_size must be a multiple of patch_size and hidden_size of 4·num_heads"
            )
        self.grid = c.sample_size // c.patch_size
        d = c.hidden_size
        self.patch_embed = nn.Conv2d(c.in_channels, d, c.patch_size, stride=c.patch_size)
        self.register_buffer("pos", sincos_positions_2d(d, self.grid), persistent=False)
        self.time_embedding = TimestepMLP(d, d)
        self.blocks = nn.ModuleList(
            TextDiTBlock(d, c.num_heads, c.mlp_ratio, c.context_dim) for _ in range(c.depth)
        )
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, c.patch_size**2 * c.out_channels)
        for layer in (self.ada_out, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c, b = self.config, x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = (t[None] if t.dim() == 0 else t) * torch.ones(b, dtype=t.dtype, device=x.device)
        cond = self.time_embedding(timestep_embedding(t, c.hidden_size).to(x.dtype))
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            h = block(h, cond, context, context_mask)
        shift, scale = self.ada_out(F.silu(cond)).chunk(2, dim=1)
        h = self.out(modulate(self.norm_out(h), shift, scale))
        p, g = c.patch_size, self.grid
        h = h.view(b, g, g, p, p, c.out_channels).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, c.out_channels, g * p, g * p)
