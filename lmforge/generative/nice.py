"""NICE: Non-linear Independent Components Estimation (Dinh, Krueger & Bengio 2015).

An invertible map h = f(x) built from additive couplings (eq. 5–6): split x by a fixed
partition into (x_I1, x_I2), then y_I1 = x_I1, y_I2 = x_I2 + m(x_I1) — unit Jacobian
determinant, exact inverse x_I2 = y_I2 − m(y_I1). Layers alternate which half is changed;
a final diagonal scaling h = exp(s) ⊙ y (§3.3) carries the whole log-determinant Σ s.
The prior is the standard logistic, log p(h_d) = −(softplus(h_d) + softplus(−h_d)) (§5.1),
so log p(x) = Σ_d log p(h_d) + Σ_d s_d (eq. 2, the change of variables).

Images are flattened to D = C·H·W; the partition is even / odd indices of the flat vector.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.generative.flow_io import save_flow

__all__ = ["NICE", "NICEConfig", "AdditiveCoupling", "logistic_log_prob"]


@dataclass
class NICEConfig:
    shape: list[int] = dataclasses.field(default_factory=lambda: [1, 8, 8])
    num_couplings: int = 4  # the paper's choice
    hidden: int = 256
    hidden_layers: int = 3  # the coupling function m: an MLP with this many ReLU layers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def logistic_log_prob(h: torch.Tensor) -> torch.Tensor:
    """Σ_d log σ'(h_d) = −Σ_d (softplus(h_d) + softplus(−h_d)) per row of [B, D]."""
    return -(F.softplus(h) + F.softplus(-h)).sum(dim=1)


class AdditiveCoupling(nn.Module):
    """y_changed = x_changed + m(x_kept); ``parity`` picks which half (even/odd) changes."""

    def __init__(self, dim: int, hidden: int, layers: int, parity: int) -> None:
        super().__init__()
        self.parity = parity
        half_keep = len(range(1 - parity, dim, 2))
        half_change = len(range(parity, dim, 2))
        mods: list[nn.Module] = [nn.Linear(half_keep, hidden), nn.ReLU()]
        for _ in range(layers - 1):
            mods += [nn.Linear(hidden, hidden), nn.ReLU()]
        mods.append(nn.Linear(hidden, half_change))
        self.m = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        keep, change = x[:, 1 - self.parity :: 2], x[:, self.parity :: 2]
        shift = self.m(keep)
        change = change - shift if reverse else change + shift
        out = torch.empty_like(x)
        out[:, 1 - self.parity :: 2] = keep
        out[:, self.parity :: 2] = change
        return out


class NICE(nn.Module):
    """``forward(x) → (h, log|det ∂h/∂x|)``; ``inverse(h)``; ``log_prob(x)``; ``sample(n)``."""

    kind = "nice"

    def save_weights_folder(self, folder: str | os.PathLike) -> Path:
        """What the Trainer's checkpoints call (`lmforge.generative.flow_io.save_flow`)."""
        return save_flow(self, folder)

    def __init__(self, config: NICEConfig) -> None:
        super().__init__()
        self.config = config
        dim = 1
        for s in config.shape:
            dim *= s
        self.dim = dim
        self.couplings = nn.ModuleList(
            AdditiveCoupling(dim, config.hidden, config.hidden_layers, i % 2)
            for i in range(config.num_couplings)
        )
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.flatten(1)
        for layer in self.couplings:
            h = layer(h)
        h = h * torch.exp(self.log_scale)
        return h, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        x = h * torch.exp(-self.log_scale)
        for layer in reversed(self.couplings):
            x = layer(x, reverse=True)
        return x.view(-1, *self.config.shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats per example (eq. 2 with the logistic prior)."""
        h, logdet = self(x)
        return logistic_log_prob(h) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """h from the logistic (inverse CDF of uniforms), mapped back through f⁻¹."""
        u = torch.rand(n, self.dim, generator=generator).clamp(1e-6, 1 - 1e-6)
        h = torch.log(u) - torch.log1p(-u)
        return self.inverse(h.to(self.log_scale.device))
