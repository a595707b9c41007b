"""RealNVP: real-valued non-volume-preserving flows (Dinh, Sohl-Dickstein & Bengio 2017).

Affine coupling (eq. 7–8): with a binary mask b, y = b ⊙ x + (1 − b) ⊙ (x ⊙ exp(s(b ⊙ x)) +
t(b ⊙ x)); log|det| = Σ (1 − b) ⊙ s (eq. 6), inverse x = b ⊙ y + (1 − b) ⊙ (y − t) ⊙ exp(−s).
Masks are spatial checkerboards or channel halves (§3.4, Fig. 3), and a squeeze turns
C×H×W into 4C×H/2×W/2 between them (§3.6). The scale is s = scale · tanh(raw) with a learned
per-channel ``scale`` (the paper's tanh stabilisation). Prior: standard Gaussian.

The stack here is [checkerboard ×3] → squeeze → [channel ×3] → [checkerboard ×3] on the
squeezed tensor (without factoring half the dimensions out at each scale, §3.6 — at 16×16
that changes little and keeps one latent tensor).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge.generative.flow_io import save_flow

__all__ = ["AffineCoupling", "RealNVP", "RealNVPConfig", "checkerboard", "squeeze", "unsqueeze"]


@dataclass
class RealNVPConfig:
    shape: list[int] = dataclasses.field(default_factory=lambda: [1, 8, 8])
    hidden: int = 64
    couplings_per_stage: int = 3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def checkerboard(c: int, h: int, w: int, parity: int) -> torch.Tensor:
    """[1, C, H, W] mask with b = 1 where (i + j + parity) is even."""
    ij = torch.arange(h)[:, None] + torch.arange(w)[None, :]
    return ((ij + parity) % 2 == 0).float().expand(1, c, h, w).clone()


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, 4C, H/2, W/2]: each 2×2 block becomes 4 channels (§3.6)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `squeeze`."""
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


class AffineCoupling(nn.Module):
    """One masked affine coupling (module docstring); ``mask`` is a fixed buffer."""

    def __init__(self, mask: torch.Tensor, hidden: int) -> None:
        super().__init__()
        c = mask.shape[1]
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(
            nn.Conv2d(c, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * c, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.scale = nn.Parameter(torch.ones(1, c, 1, 1))

    def st(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(x * self.mask).chunk(2, dim=1)
        inv = 1 - self.mask
        return self.scale * torch.tanh(raw_s) * inv, t * inv

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.st(x)
        return x * torch.exp(s) + t, s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self.st(y)  # the masked half of y equals that of x
        return (y - t) * torch.exp(-s)


class RealNVP(nn.Module):
    """``forward(x) → (z, log|det|)``; ``inverse(z)``; ``log_prob(x)``; ``sample(n)``."""

    kind = "realnvp"

    def save_weights_folder(self, folder: str | os.PathLike) -> Path:
        """What the Trainer's checkpoints call (`lmforge.generative.flow_io.save_flow`)."""
        return save_flow(self, folder)

    def __init__(self, config: RealNVPConfig) -> None:
        super().__init__()
        self.config = config
        c, h, w = config.shape
        if h % 2 or w % 2:
            raise ValueError(f"RealNVP needs even height and width, got {h}×{w}")
        k = config.couplings_per_stage
        self.stage1 = nn.ModuleList(
            AffineCoupling(checkerboard(c, h, w, i % 2), config.hidden) for i in range(k)
        )
        chan = torch.zeros(1, 4 * c, h // 2, w // 2)
        self.stage2 = nn.ModuleList()
        for i in range(k):
            mask = chan.clone()
            if i % 2 == 0:
                mask[:, : 2 * c] = 1
            else:
                mask[:, 2 * c :] = 1
            self.stage2.append(AffineCoupling(mask, config.hidden))
        self.stage3 = nn.ModuleList(
            AffineCoupling(checkerboard(4 * c, h // 2, w // 2, i % 2), config.hidden)
            for i in range(k)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], device=x.device)
        for layer in self.stage1:
            x, ld = layer(x)
            logdet = logdet + ld
        x = squeeze(x)
        for layer in [*self.stage2, *self.stage3]:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed([*self.stage2, *self.stage3]):
            z = layer.inverse(z)
        z = unsqueeze(z)
        for layer in reversed(self.stage1):
            z = layer.inverse(z)
        return z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log N(z; 0, I) + log|det ∂z/∂x| in nats per example (eq. 3)."""
        z, logdet = self(x)
        d = z[0].numel()
        return -0.5 * z.flatten(1).pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        c, h, w = self.config.shape
        z = torch.randn(n, 4 * c, h // 2, w // 2, generator=generator)
        return self.inverse(z.to(next(self.parameters()).device))
