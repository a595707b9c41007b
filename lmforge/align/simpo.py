"""SimPO: reference-free, length-normalised preference optimisation (Meng et al. 2024).

The implicit reward is the *average* log-likelihood scaled by β, ``r(x, y) = β/|y| log π(y|x)``
(eq. 4), and the Bradley–Terry objective asks the chosen reward to exceed the rejected one by a
target margin γ (eq. 6):

    L = −log σ( β/|y_w| log π(y_w|x) − β/|y_l| log π(y_l|x) − γ )

No reference model is needed. With ``label_smoothing`` ε the labels are treated as flipped with
probability ε (as conservative DPO; TRL's CPO trainer offers the same). Per-pair losses, so
the training-loop contribution is ``(losses.sum(), len(losses))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.align.dpo import PreferenceLoss

__all__ = ["simpo_loss"]


def simpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """SimPO per-pair losses (eq. 6).

    Args:
        chosen_avg_logps, rejected_avg_logps: ``[B]`` per-token *mean* log-probs of the
            completions (`sequence_logprobs(..., average=True)`).
        beta: reward scale β (the paper uses 2–2.5).
        gamma: target reward margin γ (in reward units; the paper's γ, not γ/β).
        label_smoothing: ε ∈ [0, 0.5).
    """
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 0.5)")
    chosen_rewards = beta * chosen_avg_logps
    rejected_rewards = beta * rejected_avg_logps
    z = chosen_rewards - rejected_rewards - gamma
    losses = -F.logsigmoid(z)
    if label_smoothing:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-z)
    return PreferenceLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())
