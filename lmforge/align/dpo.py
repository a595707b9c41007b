"""Direct Preference Optimisation and its close relatives, on sequence log-probabilities.

For a pair (x, y_w ≻ y_l), with ``h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) −
log π_ref(y_l|x)]`` (the difference of the policy's and the reference's log-ratios):

- ``sigmoid`` — DPO (Rafailov et al. 2023, eq. 7): ``−log σ(β h)``;
- ``sigmoid`` with ``label_smoothing`` ε — conservative DPO (Mitchell 2023, "A note on DPO
  with noisy preferences"): the labels are flipped with probability ε,
  ``−(1 − ε) log σ(β h) − ε log σ(−β h)``;
- ``ipo`` — IPO (Azar et al. 2023, eq. 17): ``(h − 1/(2β))²`` with β the paper's τ. Pass
  length-averaged log-probs (`sequence_logprobs(..., average=True)`) for the per-token form
  TRL uses (its authors' choice); the paper's equation uses sums.

The implicit rewards are ``r = β (log π − log π_ref)`` (DPO §5); logged as their means, the
fraction of pairs with ``r_w > r_l`` ("accuracy") and the mean margin ``r_w − r_l``.

Every loss here is per pair, so a batch's contribution to the training loop is
``(losses.sum(), len(losses))`` (see `PreferenceLoss.output`): the global loss is the mean
over all pairs however the batch is split into micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmforge.train.objective import LossOutput

__all__ = ["DPO_LOSS_TYPES", "PreferenceLoss", "dpo_loss"]

DPO_LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class PreferenceLoss:
    """Per-pair losses and implicit rewards (all ``[B]``) of a pairwise preference loss.

    ``extra`` holds further per-pair values to log (e.g. ORPO's log-odds ratio).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    extra: dict[str, torch.Tensor] | None = None

    def metrics(self) -> dict[str, torch.Tensor]:
        """Per-pair *sums* (detached) for `LossOutput.metrics`; the loop divides by the pairs."""
        chosen, rejected = self.chosen_rewards.detach(), self.rejected_rewards.detach()
        sums = {
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
            "rewards/accuracy": (chosen > rejected).float().sum(),
            "rewards/margin": (chosen - rejected).sum(),
        }
        for name, value in (self.extra or {}).items():
            sums[name] = value.detach().sum()
        return sums

    def output(self) -> LossOutput:
        """The training-loop contract: sum of per-pair losses, number of pairs, metric sums."""
        return LossOutput(self.losses.sum(), self.losses.numel(), self.metrics())


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """DPO / conservative DPO / IPO per-pair losses (see the module docstring).

    Args:
        policy_chosen_logps, policy_rejected_logps: ``[B]`` ``log π_θ(y|x)`` of the chosen
            and rejected completions (`sequence_logprobs`).
        ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the frozen reference.
        beta: β, the strength of the implicit KL constraint (IPO's τ).
        loss_type: "sigmoid" (DPO) or "ipo".
        label_smoothing: ε ∈ [0, 0.5), conservative DPO's label-noise rate ("sigmoid" only).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: choose one of {', '.join(DPO_LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 0.5)")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError("label_smoothing (conservative DPO) applies to loss_type='sigmoid' only")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
        if label_smoothing:
            losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1 / (2 * beta)).square()
    return PreferenceLoss(
        losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
    )
