"""A small UNet denoiser (Ho et al. 2020, §4 and App. B; Ronneberger et al. 2015), laid out
exactly like diffusers' ``UNet2DModel`` so that its parameter names are diffusers' names.

    x ─ conv_in ─ down levels (resnets [+ self-attention], stride-2 conv) ─ mid (resnet,
    attention, resnet) ─ up levels (concat skip → resnets [+ attention], nearest ×2 + conv)
    ─ GroupNorm, SiLU, conv_out

Every residual block adds the embedding of the timestep — sinusoidal (Vaswani et al. 2017,
§3.5; flipped to [cos, sin] like diffusers) through a two-layer MLP — plus, for a
class-conditional model, a learned class embedding (row ``num_classes`` is the "no class"
of classifier-free guidance, Ho & Salimans 2022). Attention (single- or multi-head, a
residual GroupNorm block) runs at the levels ``attention_levels`` marks and in the middle.
`lmforge.diffusion.unet_diffusers` converts the config to and from ``UNet2DModel``'s.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from lmforge.io import atomic_path, atomic_write_json

__all__ = [
    "Attention",
    "ResnetBlock",
    "TimestepMLP",
    "UNet",
    "UNetConfig",
    "save_weights",
    "timestep_embedding",
]


@dataclass
class UNetConfig:
    sample_size: int = 16
    in_channels: int = 1
    out_channels: int = 1
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    attention_levels: list[bool] = field(default_factory=lambda: [False, True])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    norm_eps: float = 1e-5
    dropout: float = 0.0
    num_classes: int | None = None  # None → unconditional; else + one "no class" row
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    mid_attention: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    shift: float = 0.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """[B] → [B, dim]: sin(t ω_i), cos(t ω_i) with ω_i = max_period^{−i / (dim/2 − shift)}
    (Vaswani et al. 2017, §3.5); ``flip_sin_to_cos`` puts the cosines first."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(
        half, dtype=torch.float32, device=timesteps.device
    )
    freqs = torch.exp(exponent / (half - shift))
    args = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def save_weights(model: nn.Module, kind: str, folder: str | os.PathLike) -> Path:
    """``config.json`` (``{"lmforge_denoiser": kind, **config}``) and ``model.safetensors``
    — the layout trainer checkpoints hold (`lmforge.diffusion.denoiser_io` reads it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as path:
        save_file(state, str(path), metadata={"format": "pt"})
    atomic_write_json(folder / "config.json", {"lmforge_denoiser": kind, **model.config.to_dict()})
    return folder


class TimestepMLP(nn.Module):
    """linear_1 → SiLU → linear_2 (diffusers' ``TimestepEmbedding``)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → conv → + proj(SiLU(temb)) → GroupNorm → SiLU → dropout → conv,
    plus the (1×1-projected) input (He et al. 2016; Ho et al. 2020, App. B)."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nn.Module):
    """Residual self-attention over the H·W positions: GroupNorm, q/k/v projections,
    softmax(q kᵀ / √d) v per head, output projection (diffusers' spatial ``Attention``)."""

    def __init__(self, channels: int, head_dim: int, groups: int, eps: float) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        q, k, v = (
            proj(seq).view(b, -1, self.heads, c // self.heads).transpose(1, 2)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.to_out[0](out.transpose(1, 2).reshape(b, -1, c))
        return out.transpose(1, 2).reshape(b, c, h, w) + x


class Resample(nn.Module):
    """Stride-2 conv (down) or nearest ×2 then conv (up); named ``conv`` like diffusers."""

    def __init__(self, channels: int, up: bool) -> None:
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(channels, channels, 3, stride=1 if up else 2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class Level(nn.Module):
    """One resolution of the UNet: ``resnets``, optional ``attentions``, optional
    ``downsamplers`` / ``upsamplers`` (diffusers' Down/Up[Attn]Block2D names)."""

    def __init__(
        self,
        resnets: list[ResnetBlock],
        attentions: list[Attention] | None,
        resample: Resample | None,
        up: bool,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions:
            self.attentions = nn.ModuleList(attentions)
        else:
            self.attentions = None
        if resample is not None:
            if up:
                self.upsamplers = nn.ModuleList([resample])
            else:
                self.downsamplers = nn.ModuleList([resample])

    def run(self, i: int, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.resnets[i](h, temb)
        return self.attentions[i](h) if self.attentions is not None else h


class MidBlock(nn.Module):
    def __init__(self, ch: int, temb: int, c: UNetConfig) -> None:
        super().__init__()
        g, eps = c.norm_num_groups, c.norm_eps
        self.resnets = nn.ModuleList(
            [ResnetBlock(ch, ch, temb, g, eps, c.dropout) for _ in range(2)]
        )
        self.attentions = nn.ModuleList(
            [Attention(ch, c.attention_head_dim, g, eps)] if c.mid_attention else []
        )

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.resnets[0](h, temb)
        if len(self.attentions):
            h = self.attentions[0](h)
        return self.resnets[1](h, temb)


class UNet(nn.Module):
    """``forward(x [B,C,H,W], t [B] or scalar, class_labels [B] | None) → [B,C_out,H,W]``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        chans = list(c.block_out_channels)
        if len(c.attention_levels) != len(chans):
            raise ValueError("attention_levels needs one entry per block_out_channels entry")
        if c.sample_size % 2 ** (len(chans) - 1):
            raise ValueError(f"sample_size {c.sample_size} must be divisible by 2^{len(chans) - 1}")
        temb = chans[0] * 4
        g, eps, drop, n = c.norm_num_groups, c.norm_eps, c.dropout, c.layers_per_block
        self.conv_in = nn.Conv2d(c.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepMLP(chans[0], temb)
        self.class_embedding = (
            nn.Embedding(c.num_classes + 1, temb) if c.num_classes is not None else None
        )
        self.down_blocks = nn.ModuleList()
        out = chans[0]
        for i, ch in enumerate(chans):
            cin, out = out, ch
            last = i == len(chans) - 1
            resnets = [
                ResnetBlock(cin if j == 0 else out, out, temb, g, eps, drop) for j in range(n)
            ]
            attns = [Attention(out, c.attention_head_dim, g, eps) for _ in range(n)]
            self.down_blocks.append(
                Level(
                    resnets,
                    attns if c.attention_levels[i] else None,
                    None if last else Resample(out, up=False),
                    up=False,
                )
            )
        self.mid_block = MidBlock(chans[-1], temb, c)
        self.up_blocks = nn.ModuleList()
        rev = chans[::-1]
        out = rev[0]
        for i, ch in enumerate(rev):
            prev, out = out, ch
            cin = rev[min(i + 1, len(chans) - 1)]
            last = i == len(chans) - 1
            resnets = []
            for j in range(n + 1):
                skip = cin if j == n else out
                resnets.append(
                    ResnetBlock((prev if j == 0 else out) + skip, out, temb, g, eps, drop)
                )
            attns = [Attention(out, c.attention_head_dim, g, eps) for _ in range(n + 1)]
            self.up_blocks.append(
                Level(
                    resnets,
                    attns if c.attention_levels[::-1][i] else None,
                    None if last else Resample(out, up=True),
                    up=True,
                )
            )
        self.conv_norm_out = nn.GroupNorm(g, chans[0], eps=eps)
        self.conv_out = nn.Conv2d(chans[0], c.out_channels, 3, padding=1)

    def save_weights_folder(self, folder: str | os.PathLike) -> Path:
        """What the Trainer's checkpoints call (`save_weights`)."""
        return save_weights(self, "unet", folder)

    @property
    def null_class(self) -> int | None:
        """The class id meaning "no class" (classifier-free guidance), or None."""
        return self.config.num_classes

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        c = self.config
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t[None]
        t = t * torch.ones(x.shape[0], dtype=t.dtype, device=x.device)
        emb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
        emb = self.time_embedding(emb.to(x.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), c.num_classes, device=x.device)
            emb = emb + self.class_embedding(class_labels)
        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            for i in range(len(level.resnets)):
                h = level.run(i, h, emb)
                skips.append(h)
            if hasattr(level, "downsamplers"):
                h = level.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block(h, emb)
        for level in self.up_blocks:
            for i in range(len(level.resnets)):
                h = level.run(i, torch.cat([h, skips.pop()], dim=1), emb)
            if hasattr(level, "upsamplers"):
                h = level.upsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
