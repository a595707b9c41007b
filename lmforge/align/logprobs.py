"""Per-token and per-sequence log-probabilities, entropies and KL estimators on masked batches.

lmforge's label convention (`lmforge.models.loss`): ``labels`` are *unshifted* (``labels[:, t]``
is the token at position ``t``), ``logits[:, t]`` predicts ``labels[:, t + 1]``, and -100 marks
tokens that take no part (prompt, padding). Every helper here returns tensors aligned with the
*logits* positions, ``[B, T]``, with a boolean ``mask`` that is ``labels[:, t + 1] != -100``:

    logps[b, t] = log softmax(logits[b, t])[labels[b, t + 1]]      (0 where mask is False)

Memory: a ``[B, T, V]`` log-softmax in fp32 is the largest tensor of a small model's step, so
`token_logprobs` never builds it — it gathers the target logit and subtracts a row-wise
``logsumexp`` (for half-precision logits one row at a time in fp32, since ``logsumexp`` in
bf16 loses the digits a policy ratio needs). `entropy_from_logits` works in row chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.loss import IGNORE_INDEX, shifted_targets

__all__ = [
    "KL_ESTIMATORS",
    "entropy_from_logits",
    "kl_estimate",
    "masked_mean",
    "masked_sum",
    "model_logprobs",
    "sequence_logprobs",
    "token_logprobs",
]

KL_ESTIMATORS = ("k1", "k2", "k3")


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token, and which positions count.

    Args:
        logits: ``[B, T, V]`` (any float dtype; the result is fp32, or fp64 for fp64 logits).
        labels: ``[B, T]`` unshifted token ids, -100 where no prediction is scored.

    Returns:
        ``(logps, mask)``, both ``[B, T]``: ``logps[:, t]`` is ``log p(labels[:, t+1] | ·)``
        (0 at masked positions, so sums over ``T`` need no further masking) and ``mask`` is
        the boolean ``labels[:, t + 1] != -100`` (the last position is always False).
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must be [B, T, V] "
            "and [B, T]"
        )
    targets = shifted_targets(labels.to(logits.device))
    mask = targets != IGNORE_INDEX
    index = targets.masked_fill(~mask, 0).unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, index).squeeze(-1)
        logps = picked - torch.logsumexp(logits, dim=-1)
    else:  # half precision: upcast one row at a time (never a whole fp32 [B, T, V] copy)
        rows = []
        for row, idx in zip(logits, index, strict=True):
            row = row.float()
            rows.append(row.gather(-1, idx).squeeze(-1) - torch.logsumexp(row, dim=-1))
        logps = torch.stack(rows)
    return logps.masked_fill(~mask, 0.0), mask


def sequence_logprobs(
    logps: torch.Tensor, mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """``[B]`` sum over each row's scored tokens of ``logps`` (``log π(y|x)``), or with
    ``average=True`` their mean (the length-normalised log-likelihood of SimPO / ORPO;
    0 for a row without scored tokens)."""
    total = (logps * mask).sum(-1)
    if not average:
        return total
    return total / mask.sum(-1).clamp(min=1)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` at every position: ``logits.shape[:-1]``.

    ``H = logsumexp(z) − Σ_v softmax(z)_v z_v``, computed in fp32 over ``chunk_size`` rows of
    the flattened logits at a time so only one chunk's probabilities exist at once.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be ≥ 1")
    flat = logits.reshape(-1, logits.shape[-1])
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    parts = []
    for chunk in flat.split(chunk_size):
        z = chunk.to(out_dtype)
        logp = F.log_softmax(z, dim=-1)
        parts.append(-(logp.exp() * logp).sum(-1))
    if not parts:
        return flat.new_zeros(logits.shape[:-1], dtype=out_dtype)
    return torch.cat(parts).reshape(logits.shape[:-1])


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is true (over ``dim``, or everything)."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is true (over ``dim``, or everything); 0 where empty."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def kl_estimate(
    logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3"
) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π (Schulman 2020, "Approximating
    KL Divergence"), with ``r = π_ref / π`` at the sampled token:

    - ``k1 = −log r`` (unbiased, high variance, can be negative) — the per-token penalty
      folded into PPO rewards (Ziegler et al. 2019; InstructGPT eq. 2);
    - ``k2 = ½ (log r)²`` (biased, low variance);
    - ``k3 = r − 1 − log r`` (unbiased, ≥ 0) — GRPO's KL term (DeepSeekMath eq. 4).
    """
    log_r = ref_logps - logps
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.square()
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"estimator={estimator!r}: choose one of {', '.join(KL_ESTIMATORS)}")


def model_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run a causal LM and return ``(logps, mask, entropy)`` as in `token_logprobs`.

    Only the positions from the batch's first scored one onwards get logits (the model's
    ``logits_to_keep``), so a long shared prompt costs no ``[B, T_prompt, V]`` tensor; the
    outputs are still ``[B, T]`` (0 / False / 0 before that). ``temperature`` divides the
    logits first, so a policy sampled at temperature τ is scored under the distribution it
    was sampled from (as TRL and verl do). ``entropy`` is the per-position entropy when
    ``with_entropy``, else None.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    b, t = input_ids.shape
    scored = shifted_targets(labels) != IGNORE_INDEX
    if not bool(scored.any()):
        raise ValueError("labels score no token (all -100 after the first position)")
    first = int(scored.any(0).float().argmax())  # first position with a scored token in any row
    keep = t - first
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    logits = model(input_ids=input_ids, logits_to_keep=keep, **kwargs).logits
    if temperature != 1.0:
        logits = logits / temperature
    logps, mask = token_logprobs(logits, labels[:, first:])
    entropy = entropy_from_logits(logits) if with_entropy else None
    if first:
        logps = F.pad(logps, (first, 0))
        mask = F.pad(mask, (first, 0), value=False)
        entropy = None if entropy is None else F.pad(entropy, (first, 0))
    return logps, mask, entropy
