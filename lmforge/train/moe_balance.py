"""Auxiliary-loss-free load balancing of MoE experts (Wang et al. 2024, arXiv:2408.15664;
DeepSeek-V3, arXiv:2412.19437 §2.1.2).

Each MoE layer adds a per-expert bias ``b_i`` (buffer ``e_score_correction_bias``) to the
affinities *only to choose* the top-k experts; the gating weights use the raw affinities, so
the bias steers the load without entering the gradient. After every optimizer step the bias
moves by a fixed speed γ toward balance:

    b_i ← b_i + γ · sign(mean_j load_j − load_i)

(an overloaded expert becomes less likely to be chosen, an underloaded one more). ``load_i``
is the number of tokens routed to expert ``i`` since the last update — the layer's buffer
``expert_load``, accumulated by its training forwards and reset here. Balance is measured by
the maximal violation ``MaxVio = max_i load_i / mean_i load_i − 1`` (Wang et al., eq. 6).

The `Trainer` calls `update_correction_bias` after each optimizer step when the model has
MoE layers, with γ = ``train.moe_bias_update_speed`` (0 keeps the bias fixed; the loads are
still measured and reset, and the step's mean MaxVio is logged as ``moe_maxvio``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "bias_update",
    "correction_bias",
    "has_moe",
    "max_violation",
    "moe_layers",
    "update_correction_bias",
]

BIAS = "e_score_correction_bias"
LOAD = "expert_load"


def correction_bias(module: nn.Module) -> torch.Tensor | None:
    """The layer's ``e_score_correction_bias``: its own buffer or its router's (``gate``)."""
    for owner in (module, getattr(module, "gate", None)):
        bias = getattr(owner, BIAS, None)
        if isinstance(bias, torch.Tensor):
            return bias
    return None


def moe_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` that count their ``expert_load`` and route with a correction
    bias (e.g. `lmforge.nn.moe.DeepSeekMoE`, whose bias sits on its router ``gate``)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, LOAD, None), torch.Tensor)
        and correction_bias(module) is not None
    ]


def has_moe(model: nn.Module) -> bool:
    """True if ``model`` has at least one layer that `update_correction_bias` updates."""
    return bool(moe_layers(model))


def max_violation(load: torch.Tensor) -> torch.Tensor:
    """``MaxVio = max load ÷ mean load − 1`` over the last dim (0 where nothing was routed)."""
    load = load.double()
    mean = load.mean(dim=-1)
    return torch.where(mean > 0, load.amax(dim=-1) / mean.clamp_min(1e-300) - 1, 0.0)


def bias_update(load: torch.Tensor, gamma: float) -> torch.Tensor:
    """``Δb_i = γ · sign(mean load − load_i)`` (fp32)."""
    load = load.double()
    return (gamma * torch.sign(load.mean(dim=-1, keepdim=True) - load)).float()


@torch.no_grad()
def update_correction_bias(
    model: nn.Module,
    gamma: float,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Apply `bias_update` with speed ``gamma`` to every MoE layer, reset the loads, and
    return each layer's MaxVio over the counted tokens (``{layer name: maxvio}``).

    ``reduce`` sums a tensor over data-parallel ranks (e.g. ``distributed.all_reduce_sum``)
    so every rank sees the global load and applies the same update."""
    layers = moe_layers(model)
    if not layers:
        return {}
    loads = [getattr(m, LOAD).detach().double() for _, m in layers]
    sizes = [x.numel() for x in loads]
    flat = torch.cat([x.reshape(-1) for x in loads])
    if reduce is not None:
        flat = reduce(flat)
    violations = {}
    for (name, module), load in zip(layers, flat.split(sizes)):
        violations[name] = float(max_violation(load))
        if gamma:
            bias = correction_bias(module)
            bias.add_(bias_update(load, gamma).to(bias.device, bias.dtype))
        getattr(module, LOAD).zero_()
    return violations
