"""AdamW with decoupled weight decay on matrices only (Loshchilov & Hutter 2019).

Weight decay shrinks weights toward zero; it is applied to the 2-D weights (projections and
embeddings) and not to norm gains or biases, as in GPT-2/3 and LLaMA training: decaying a
gain toward zero fights the normalisation it scales.
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: ``ndim >= 2`` parameters decay, the rest (norms, biases) do not.

    Parameters are taken once each (tied embeddings appear once) and in a stable order, so
    optimizer state maps to the same parameters in every process and after a resume.
    """
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def fused_available(model: nn.Module) -> bool:
    """Fused AdamW runs as one kernel per step on CUDA (and as a vectorised loop on CPU)."""
    devices = {p.device.type for p in model.parameters()}
    return devices <= {"cuda", "cpu"} and bool(devices)


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over `param_groups`; ``fused=None`` picks fused where the device supports it."""
    if fused is None:
        fused = fused_available(model)
    return torch.optim.AdamW(
        param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused
    )
