"""Next-token cross-entropy, in full or in chunks that never hold the whole ``[B, T, V]`` logits.

The language-modelling loss (Radford et al. 2018, eq. 1) over the predicted positions
``P = {t : labels[t + 1] ≠ -100}``:

    L_sum = Σ_{t ∈ P} −log softmax(W h_t)[labels[t + 1]]        L_mean = L_sum / |P|

For a 16k vocabulary the logits (and the softmax and gradient buffers cross-entropy keeps)
are the largest activations of a small model's training step — larger than every block's
once activation checkpointing is on. `chunked_next_token_loss` computes ``W h_t`` and its
cross-entropy ``chunk_size`` positions at a time under activation checkpointing, so only one
chunk's logits exist at once, in forward and in backward (the memory idea of "fused linear
cross-entropy", e.g. Liger-Kernel; here in plain PyTorch). The result equals the full loss up
to summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum")


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` targets of positions ``t``: ``labels[:, t + 1]`` (-100 for the last)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def next_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of ``logits[:, t]`` against ``labels[:, t + 1]``, ignoring -100.

    The labels are shifted (not the logits), which avoids copying the ``[B, T, V]`` tensor.
    Half-precision logits are upcast to fp32; fp32 and fp64 are kept.
    """
    _check_reduction(reduction)
    shifted = shifted_targets(labels.to(logits.device)).reshape(-1)
    flat = logits.reshape(-1, logits.shape[-1])
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return F.cross_entropy(flat, shifted, ignore_index=IGNORE_INDEX, reduction=reduction)


def chunked_next_token_loss(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor,
    chunk_size: int,
    reduction: str = "mean",
) -> torch.Tensor:
    """`next_token_loss` of ``lm_head(hidden)`` without materialising all logits.

    Args:
        hidden: ``[B, T, H]`` final hidden states (after the last norm).
        lm_head: the output projection (called as a module, so wrappers' hooks run).
        labels: ``[B, T]`` unshifted labels, -100 = no loss.
        chunk_size: positions (of the flattened ``B·T``) per chunk; each chunk's logits are
            recomputed in backward instead of stored.
        reduction: "mean" over predicted positions (NaN when there are none, as
            ``F.cross_entropy``) or "sum".
    """
    _check_reduction(reduction)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be ≥ 1")
    targets = shifted_targets(labels.to(hidden.device)).reshape(-1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    keep = targets != IGNORE_INDEX
    if not bool(keep.all()):  # only predicted positions need logits
        flat, targets = flat[keep], targets[keep]
    total = flat.new_zeros((), dtype=torch.float32 if flat.dtype != torch.float64 else flat.dtype)

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = lm_head(h)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return F.cross_entropy(logits, y, reduction="sum")

    grad = torch.is_grad_enabled() and flat.requires_grad
    for start in range(0, flat.shape[0], chunk_size):
        h, y = flat[start : start + chunk_size], targets[start : start + chunk_size]
        part = checkpoint(chunk_loss, h, y, use_reentrant=False) if grad else chunk_loss(h, y)
        total = total + part
    if reduction == "sum":
        return total
    return total / keep.sum()


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: choose one of {', '.join(REDUCTIONS)}")
