"""ORPO: monolithic preference optimisation without a reference model (Hong et al. 2024).

With ``P = P_θ(y|x)`` the length-normalised likelihood ``exp(1/|y| log π(y|x))`` and
``odds(y|x) = P / (1 − P)`` (eq. 4), ORPO adds to the SFT loss on the chosen answer an
odds-ratio term (eqs. 6–7):

    L = L_SFT − λ log σ( log odds(y_w|x) − log odds(y_l|x) )

where ``log odds = log P − log(1 − P)`` is computed stably as ``a − log(−expm1(a))`` from the
average log-prob ``a`` (< 0). Here ``L_SFT`` of a pair is the chosen completion's per-token
mean NLL, ``−a_w``, so the whole loss is per pair and the training-loop contribution is
``(losses.sum(), len(losses))``. (TRL's trainer instead averages the NLL over all chosen tokens
of the batch; the odds-ratio term is the same.) The logged rewards are ``λ a`` as in TRL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.align.dpo import PreferenceLoss

__all__ = ["log_odds", "orpo_loss"]


def log_odds(avg_logps: torch.Tensor) -> torch.Tensor:
    """``log(P / (1 − P))`` for ``P = exp(avg_logps)``; avg_logps must be < 0."""
    # log(1 − e^a): log1p(−e^a) is accurate for a ≪ 0, log(−expm1(a)) near 0 (Mächler 2012).
    log1m = torch.where(
        avg_logps < -0.6931471805599453,
        torch.log1p(-torch.exp(avg_logps)),
        torch.log(-torch.expm1(avg_logps)),
    )
    return avg_logps - log1m


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def orpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    lam: float = 0.1,
) -> PreferenceLoss:
    """ORPO per-pair losses ``−a_w − λ log σ(log odds_w − log odds_l)`` (eq. 6).

    Args:
        chosen_avg_logps, rejected_avg_logps: ``[B]`` per-token mean log-probs
            (`sequence_logprobs(..., average=True)`), all < 0.
        lam: λ, the weight of the odds-ratio term (the paper uses 0.1–0.2; TRL calls it β).

    ``extra`` logs ``orpo/log_odds_ratio`` and ``orpo/nll`` (per-pair values).
    """
    if lam < 0:
        raise ValueError(f"lam={lam} must be ≥ 0")
    ratio = log_odds(_upcast(chosen_avg_logps)) - log_odds(_upcast(rejected_avg_logps))
    odds_term = -F.logsigmoid(ratio)
    nll = -chosen_avg_logps
    losses = nll + lam * odds_term
    return PreferenceLoss(
        losses,
        lam * chosen_avg_logps.detach(),
        lam * rejected_avg_logps.detach(),
        extra={"orpo/log_odds_ratio": ratio.detach(), "orpo/nll": nll.detach()},
    )
