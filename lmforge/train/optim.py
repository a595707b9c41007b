"""AdamW with decoupled weight decay on matrices only (Loshchilov & Hutter 2019).

Weight decay shrinks weights toward zero; it is applied to the 2-D weights (projections and
embeddings) and not to norm gains or biases, as in GPT-2/3 and LLaMA training: decaying a
gain toward zero fights the normalisation it scales.
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(
    model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None
) -> list[dict]:
    """Two AdamW groups: ``ndim >= 2`` parameters decay, the rest (norms, biases) do not.

    Parameters are taken once each (tied embeddings appear once) and in a stable order, so
    optimizer state maps to the same parameters in every process and after a resume.
    ``lr_scales`` ({name part: s}): the parameters whose name contains that part (e.g.
    ``"pointer_head."``) get their own two groups with ``"lr_scale": s`` — the Trainer sets
    their learning rate to s × the schedule's (a head that must move faster than the body: a
    loss weight cannot do it under AdamW, whose step is invariant to scaling a gradient).
    """
    scales = lr_scales or {}
    buckets: dict[float, tuple[list, list]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        scale = next((s for part, s in scales.items() if part in name), 1.0)
        decay, no_decay = buckets.setdefault(scale, ([], []))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = []
    for scale, (decay, no_decay) in buckets.items():
        extra = {} if scale == 1.0 else {"lr_scale": scale}
        if decay or scale == 1.0:
            groups.append({"params": decay, "weight_decay": weight_decay, **extra})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


def fused_available(model: nn.Module) -> bool:
    """Fused AdamW runs as one kernel per step on CUDA (and as a vectorised loop on CPU)."""
    devices = {p.device.type for p in model.parameters()}
    return devices <= {"cuda", "cpu"} and bool(devices)


class AdamWLowPrecisionMoments(torch.optim.Optimizer):
    """AdamW (the update of ``torch.optim.AdamW``) with both moments *stored* in
    ``moment_dtype`` — bf16 in DeepSeek-V3's FP8 recipe (arXiv:2412.19437 §3.3.3) — and the
    update computed in fp32 on the fp32 master weights:

        m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,
        θ ← θ(1 − ηλ) − η · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, moment_dtype: torch.dtype = torch.bfloat16):  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.moment_dtype = moment_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (beta1, beta2), lr = group["betas"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.moment_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.moment_dtype)
                state["step"] += 1
                t = float(state["step"])
                g = p.grad.float()
                m = state["exp_avg"].float().lerp_(g, 1 - beta1)
                v = state["exp_avg_sq"].float().mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["exp_avg"] = m.to(self.moment_dtype)  # (a resume loads them as fp32)
                state["exp_avg_sq"] = v.to(self.moment_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
        return loss


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
    moment_dtype: torch.dtype = torch.float32,
    lr_scales: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """AdamW over `param_groups` (``lr_scales`` as there); ``fused=None`` picks fused where
    the device supports it.

    ``moment_dtype=torch.bfloat16`` stores the moments in bf16 (`AdamWLowPrecisionMoments`;
    the FP8 recipe), at half the optimizer-state memory."""
    groups = param_groups(model, weight_decay, lr_scales)
    if moment_dtype != torch.float32:
        return AdamWLowPrecisionMoments(groups, lr, betas, eps, moment_dtype=moment_dtype)
    if fused is None:
        fused = fused_available(model)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
