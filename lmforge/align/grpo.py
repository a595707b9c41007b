"""GRPO and its variants: critic-free policy optimisation with group-relative advantages.

For each prompt, G completions ``o_1..o_G`` are sampled with rewards ``r_i``. Their advantage,
shared by every token of ``o_i`` (DeepSeekMath, Shao et al. 2024, §4.1.2), is

    Â_i = (r_i − mean(r)) / (std(r) + eps)    scale="std"  (GRPO; Bessel-corrected std)
    Â_i =  r_i − mean(r)                      scale="none" (Dr. GRPO, Liu et al. 2025)

and the per-token clipped surrogate, with ``ρ_{i,t} = π_θ(o_{i,t}|·) / π_old(o_{i,t}|·)``, is

    ℓ_{i,t} = −min(ρ Â_i, clip(ρ, 1 − ε_low, 1 + ε_high) Â_i) + β · k3_{i,t}

(k3 = ``π_ref/π − log(π_ref/π) − 1``, DeepSeekMath eq. 4; β = 0 needs no reference model).
The variants differ in how the ℓ are averaged — and hence in what a "unit" of the training
loop's Σ loss_sum / Σ count is:

| aggregation | batch loss | loss_sum | count |
|---|---|---|---|
| grpo (DeepSeekMath eq. 3) | (1/B) Σ_i (1/abs(o_i)) Σ_t ℓ_{i,t} | Σ_i mean_t ℓ_{i,t} | sequences |
| dr_grpo (L = max length) | (1/(B·L)) Σ_i Σ_t ℓ_{i,t} | Σ_i Σ_t ℓ_{i,t} / L | sequences |
| dapo (DAPO objective) | (1/Σ_i abs(o_i)) Σ_i Σ_t ℓ_{i,t} | Σ_i Σ_t ℓ_{i,t} | tokens |
| gspo (GSPO) | (1/B) Σ_i −min(s_i Â_i, clip(s_i) Â_i) | Σ_i ℓ_i | sequences |

with GSPO's sequence ratio ``s_i = exp((1/|o_i|) Σ_t log ρ_{i,t})`` (Zheng et al. 2025);
its KL term, when β > 0, is added per token and averaged like grpo's.
In every case the loop's global quotient is the algorithm's batch loss over the whole global
batch, whatever the micro-batching: grpo and gspo average over sequences, dr_grpo divides by
the constant ``L`` per sequence (its "B·L" is sequences × L), dapo averages over all tokens of
the batch. (TRL's grpo and dr_grpo average within each micro-batch and then over the
accumulation steps, which agrees only when micro-batches are equally sized.) DAPO's "clip-higher" is ε_high > ε_low.

Metrics are sums in the same units as the loss (summed like ℓ, so the loop's quotient is
the metric averaged the way the loss is): ``clip_frac``, ``kl`` (when β > 0) and ``policy_loss``.
"""

from __future__ import annotations

import torch

from lmforge.align.logprobs import kl_estimate, masked_sum
from lmforge.train.objective import LossOutput

__all__ = ["AGGREGATIONS", "grpo_advantages", "grpo_loss"]

AGGREGATIONS = ("grpo", "dr_grpo", "dapo", "gspo")


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "std", eps: float = 1e-4
) -> torch.Tensor:
    """Group-normalised advantages ``[N]`` for rewards ``[N]`` laid out group by group
    (``rewards[g·G : (g+1)·G]`` are the G completions of prompt g).

    ``scale="std"`` divides by the group's std (Bessel-corrected, as ``torch.std``) + eps;
    ``scale="none"`` only subtracts the group mean (Dr. GRPO).
    """
    if scale not in ("std", "none"):
        raise ValueError(f"scale={scale!r}: choose 'std' or 'none'")
    if group_size < 2:
        raise ValueError(f"group_size={group_size} must be ≥ 2 (advantages are group-relative)")
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards of shape {tuple(rewards.shape)} are not a 1-D whole number of groups of "
            f"{group_size}"
        )
    groups = rewards.view(-1, group_size).to(
        torch.float32 if rewards.dtype != torch.float64 else torch.float64
    )
    centred = groups - groups.mean(-1, keepdim=True)
    if scale == "std":
        centred = centred / (groups.std(-1, keepdim=True) + eps)
    return centred.view(-1)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "grpo",
    eps_low: float = 0.2,
    eps_high: float | None = None,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    max_completion_length: int | None = None,
) -> LossOutput:
    """GRPO-family loss as a `LossOutput` (see the module docstring for the units).

    Args:
        logps: ``[B, T]`` current policy log-probs of the sampled tokens (with grad).
        old_logps: ``[B, T]`` the sampling policy's; pass ``logps.detach()`` when each rollout
            is used for one gradient step only (ratio 1, gradient of the plain policy gradient).
        advantages: ``[B]`` per-sequence advantages (`grpo_advantages`).
        mask: ``[B, T]`` completion tokens.
        aggregation: "grpo", "dr_grpo", "dapo" or "gspo".
        eps_low, eps_high: clip range ``[1 − eps_low, 1 + eps_high]``; eps_high defaults to
            eps_low (DAPO: 0.2 / 0.28; GSPO: 3e-4 / 4e-4).
        beta: weight of the k3 KL to the reference; 0 ignores ``ref_logps``.
        ref_logps: ``[B, T]`` reference log-probs (needed when beta > 0).
        max_completion_length: L of dr_grpo (required there).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}: choose one of {', '.join(AGGREGATIONS)}")
    eps_high = eps_low if eps_high is None else eps_high
    if beta and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps (or set beta=0 to train without a reference)")
    if aggregation == "dr_grpo" and not max_completion_length:
        raise ValueError("aggregation='dr_grpo' needs max_completion_length (its constant L)")
    if advantages.ndim != 1 or advantages.shape[0] != logps.shape[0]:
        raise ValueError(f"advantages must be [B]={logps.shape[0]}, got {tuple(advantages.shape)}")
    mask = mask.bool()
    lengths = mask.sum(-1).clamp(min=1)
    adv = advantages.to(logps.dtype).unsqueeze(-1)
    log_ratio = logps - old_logps
    if aggregation == "gspo":  # one length-normalised ratio per sequence, broadcast over T
        log_ratio = (masked_sum(log_ratio, mask, dim=-1) / lengths).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    policy = -torch.min(ratio * adv, clipped * adv)
    clip_active = (ratio * adv > clipped * adv).to(logps.dtype).detach()
    if aggregation == "gspo":
        policy, clip_active = policy.expand_as(logps), clip_active.expand_as(logps)
    per_token = policy
    kl = None
    if beta:
        kl = kl_estimate(logps, ref_logps, "k3")
        per_token = per_token + beta * kl

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if aggregation in ("grpo", "gspo"):
            return (masked_sum(x, mask, dim=-1) / lengths).sum()
        if aggregation == "dr_grpo":
            return masked_sum(x, mask) / max_completion_length
        return masked_sum(x, mask)  # dapo

    count = mask.sum() if aggregation == "dapo" else torch.tensor(logps.shape[0])
    metrics = {"policy_loss": reduce(policy.detach()), "clip_frac": reduce(clip_active)}
    if kl is not None:
        metrics["kl"] = reduce(kl.detach())
    return LossOutput(reduce(per_token), count, metrics)
