"""Kimi k1.5's policy optimisation: online mirror descent with a squared surrogate, and its
length-penalty reward (Kimi Team 2025, "Kimi k1.5: Scaling Reinforcement Learning with LLMs").

Mirror descent (§2.3.2). Each iteration i maximises reward under a relative-entropy constraint
to the current policy π_i; its optimum is ``π*(y|x) = π_i(y|x) exp(r/τ) / Z`` and so
``r − τ log Z = τ log(π*/π_i)``. Replacing π* by π_θ gives a squared-error surrogate over k
samples ``y_1..y_k`` of each prompt (eq. 3), with ``τ log Z`` approximated by the mean reward
``r̄`` of the k samples:

    L(θ) = (1/k) Σ_j ( r(x, y_j) − r̄ − τ · log(π_θ(y_j|x) / π_i(y_j|x)) )²

whose gradient, ``−2τ (1/k) Σ_j [(r_j − r̄) ∇ log π_θ(y_j) − τ Δ_j ∇Δ_j]`` (with
``Δ_j = log π_θ/π_i``), is the paper's policy gradient with a mean-reward baseline plus an
l2 pull towards π_i, scaled by 2τ. ``log π(y|x)`` is the *sum* over the completion's tokens.

Length penalty (§2.3.3): within the k responses to a prompt, with lengths in
``[min_len, max_len]``, ``λ_j = 0.5 − (len_j − min_len) / (max_len − min_len)`` (0 when all
lengths are equal); the reward is ``λ_j`` for a correct response and ``min(0, λ_j)`` for a wrong
one, so short correct answers gain and long wrong ones lose.

Units: the surrogate is per response, so it returns ``loss_sum`` = Σ_j (…)² and ``count`` = the
number of responses (the global loss is the mean over all responses of the batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmforge.align.logprobs import masked_sum
from lmforge.train.objective import LossOutput

__all__ = ["kimi_length_rewards", "kimi_loss"]


def kimi_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    tau: float = 0.1,
) -> LossOutput:
    """Kimi k1.5 squared surrogate (eq. 3) as a `LossOutput`.

    Args:
        logps: ``[B, T]`` policy log-probs of the sampled tokens (with grad).
        old_logps: ``[B, T]`` log-probs under π_i, the policy that sampled them.
        rewards: ``[B]`` rewards, laid out group by group (``group_size`` per prompt).
        mask: ``[B, T]`` completion tokens.
        group_size: k, the samples per prompt (the mean-reward baseline is per group).
        tau: τ > 0, the strength of the relative-entropy regulariser.

    Metric sums per response: ``baseline_adv`` (r − r̄), ``log_ratio`` (Δ).
    """
    if tau <= 0:
        raise ValueError(f"tau={tau} must be > 0")
    b = logps.shape[0]
    if group_size < 1 or b % group_size or rewards.shape != (b,):
        raise ValueError(
            f"rewards {tuple(rewards.shape)} must be [B]={b} with B a multiple of "
            f"group_size={group_size}"
        )
    mask = mask.bool()
    groups = rewards.to(logps.dtype).view(-1, group_size)
    centred = (groups - groups.mean(-1, keepdim=True)).view(-1)
    log_ratio = masked_sum(logps - old_logps, mask, dim=-1)
    losses = (centred - tau * log_ratio).square()
    metrics = {"baseline_adv": centred.detach().sum(), "log_ratio": log_ratio.detach().sum()}
    return LossOutput(losses.sum(), b, metrics)


def kimi_length_rewards(lengths: Sequence[int], correct: Sequence[bool]) -> list[float]:
    """Length-penalty rewards (§2.3.3) for the k responses to one prompt."""
    if len(lengths) != len(correct):
        raise ValueError(f"{len(lengths)} lengths but {len(correct)} correctness flags")
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    out = []
    for n, ok in zip(lengths, correct, strict=True):
        lam = 0.0 if hi == lo else 0.5 - (n - lo) / (hi - lo)
        out.append(lam if ok else min(0.0, lam))
    return out
