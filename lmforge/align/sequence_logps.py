"""Sequence log-probabilities ``log π(y|x)`` of packed or padded batches (the DPO family).

    logps, lengths = sequence_logps(model, batch)        # [S] each, S = 2 × pairs

One forward pass over all sequences of a batch (chosen and rejected together, packed or
padded; see `lmforge.align.preference_data`) in which only the *scored* positions —
completion tokens — reach the output head: the prompt's hidden states never become ``[·, V]``
logits. Used by the preference objectives (`lmforge.align.preference_objective`) and by the
precomputed DPO reference (`lmforge.align.reference.precompute_reference_logps`).
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.loss import IGNORE_INDEX, shifted_targets
from lmforge.train.objective import Batch, model_inputs

__all__ = ["sequence_logps"]


def _output_head(model: nn.Module) -> nn.Module:
    from lmforge.train.distributed import unwrap  # under DDP / torch.compile wrappers

    head = getattr(unwrap(model), "lm_head", None)
    if not isinstance(head, nn.Module):
        raise TypeError(f"{type(unwrap(model)).__name__} has no lm_head to score completions with")
    return head


def sequence_logps(
    model: nn.Module, batch: Batch, length_groups: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, lengths)``, both ``[S]`` (S = 2 × pairs): ``log π(y|x)`` summed over each
    sequence's scored tokens, and their number.

    ``batch`` holds ``input_ids``, unshifted ``labels`` (-100 = not scored) and
    ``sequence_ids`` (the sequence of each token, -1 for filler), plus the model inputs
    (``position_ids`` / ``document_ids`` when packed, ``attention_mask`` when padded). A
    forward pre-hook on the output head keeps only the hidden states of positions whose next
    token is scored, so the logits are ``[N_scored, V]``.

    A padded batch (one right-padded sequence per row) may be run as ``length_groups``
    forward passes over its rows sorted by length, each cut to its own longest row: little
    padding is computed and attention stays the unmasked causal kernel (cheaper than the
    block-diagonal mask of packed rows on CPU). The result is the same.
    """
    num_seqs = 2 * batch["pair_ids"].numel()
    if length_groups <= 1 or "document_ids" in batch:
        return _scored_logps(model, batch, num_seqs)
    real = batch["sequence_ids"] >= 0
    order = real.sum(-1).argsort()
    logps = lengths = None
    for rows in order.tensor_split(min(length_groups, len(order))):
        width = int(real[rows].sum(-1).max())
        part = {k: batch[k][rows, :width] for k in ("input_ids", "labels", "sequence_ids")}
        a, b = _scored_logps(model, part, num_seqs)
        logps, lengths = (a, b) if logps is None else (logps + a, lengths + b)
    return logps, lengths


def _scored_logps(model: nn.Module, batch: Batch, num_seqs: int):
    targets = shifted_targets(batch["labels"])
    keep = targets != IGNORE_INDEX
    owner = torch.nn.functional.pad(batch["sequence_ids"][:, 1:], (0, 1), value=-1)[keep]

    def only_scored(module, args):
        return (args[0][keep],)

    handle = _output_head(model).register_forward_pre_hook(only_scored)
    try:
        inputs = model_inputs(batch)
        # Right padding under a causal mask never reaches a real token: no mask is needed
        # (and SDPA's unmasked causal kernel is the fast one).
        inputs.pop("attention_mask", None)
        logits = model(**inputs).logits  # [N_scored, V]
    finally:
        handle.remove()
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    picked = logits.gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    logps = token_logps.new_zeros(num_seqs).index_add(0, owner, token_logps)
    lengths = token_logps.new_zeros(num_seqs).index_add(0, owner, torch.ones_like(token_logps))
    return logps, lengths
