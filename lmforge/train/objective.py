"""Training objectives: what the loop minimises, as ``objective(model, batch) -> LossOutput``.

An objective returns a *sum* of per-unit losses and the number of units (tokens for language
modelling, pairs for a preference loss, completion tokens for a policy-gradient loss). The
loop divides the sum over the whole global batch (all micro-batches and ranks) by the total
count, so every unit weighs the same however the batch is split. Later objectives (DPO, PPO,
GRPO) are further functions with this signature; the loop does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge.models.loss import IGNORE_INDEX

Batch = dict[str, torch.Tensor]
# Batch keys the model's forward accepts besides input_ids (labels stay with the objective).
MODEL_INPUTS = ("position_ids", "document_ids", "attention_mask", "cu_seqlens")


@dataclass
class LossOutput:
    """``loss_sum``: 0-dim sum of per-unit losses (with grad); ``count``: number of units;
    ``metrics``: further per-unit *sums* to log, reported as means over the global batch."""

    loss_sum: torch.Tensor
    count: torch.Tensor | int
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


Objective = Callable[[nn.Module, Batch], LossOutput]


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """The keyword arguments of the model's forward present in ``batch``."""
    return {"input_ids": batch["input_ids"], **{k: batch[k] for k in MODEL_INPUTS if k in batch}}


def causal_lm_loss(model: nn.Module, batch: Batch, chunk_size: int = 0) -> LossOutput:
    """Summed next-token cross-entropy of logits[:, t] vs labels[:, t+1], -100 ignored.

    The count is the number of predicted tokens (``num_loss_tokens`` in the data contract),
    so sum ÷ count over a global batch is the token-weighted mean NLL of Radford et al.'s
    language-modelling objective; exp of it is the perplexity. ``chunk_size`` > 0 computes
    it without materialising the ``[B, T, V]`` logits (`lmforge.models.loss`).
    A model with multi-token-prediction modules (DeepSeek-V3 §2.2) reports its depth loss
    (mean over depths, already in the loss × ``mtp_loss_weight``) as metric ``mtp_loss``.
    """
    out = model(
        **model_inputs(batch),
        labels=batch["labels"],
        loss_reduction="sum",
        loss_chunk_size=chunk_size,
    )
    count = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    mtp = getattr(out, "mtp_loss", None)  # a per-token mean: × count is its per-token sum
    metrics = {} if mtp is None else {"mtp_loss": mtp.detach() * count}
    return LossOutput(out.loss, count, metrics)
