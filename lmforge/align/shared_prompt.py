"""Log-probs of completions that share prompts, each prompt run once (GRPO's groups).

    out = shared_prompt_logprobs(model, batch["input_ids"], batch["labels"], temperature=0.6)
    if out is not None:
        logps, mask, entropy = out          # the layout of `lmforge.align.logprobs.model_logprobs`

A GRPO rollout holds ``G`` completions of every prompt. The padded training forward runs each
prompt ``G`` times; here the prompt runs once, its keys and values are kept (with their
autograd history) in a `SharedPromptCache`, and each completion runs as a continuation that
reads them: ``prompt[:-1]`` once per distinct prompt, then ``[prompt[-1], completion[:-1]]``
per completion, which predicts exactly the completion's tokens. Causal attention over
``[prompt; completion]`` is the same computation split in two, so the log-probs equal
`model_logprobs`' and the gradients too (the prompt's K/V gradient is the sum over the
group's completions, as autograd sums it in the padded batch). With prompts of 28 tokens and
completions of 64 a group of 8 computes 27 + 8 × 64 positions instead of 8 × 92 (−30 %).
Completions run in up to four length-sorted chunks, each padded only to its own longest
(`length_chunks`), and only completion positions reach the output head.

Used when it is exact and pays: an lmforge causal LM whose attention layers all take a KV
cache (no MLA), without gradient checkpointing (a recomputed prompt layer would read the
cache in its continuation state), in a single process (DDP's and FSDP2's hooks expect one
forward per backward; this makes two), and with
fewer distinct prompts than rows; otherwise `shared_prompt_logprobs` returns None.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.align.logprobs import entropy_from_logits
from lmforge.models.loss import IGNORE_INDEX, shifted_targets
from lmforge.nn.attention import Attention

__all__ = [
    "SharedPromptCache",
    "length_chunks",
    "prompt_sharing_supported",
    "shared_prompt_logprobs",
]


class SharedPromptCache:
    """The KV-cache protocol (``update`` / ``advance`` / ``length``) over prompts run once.

    The prompt pass stores each layer's K/V ``[P, Hkv, L, D]`` (not detached); after
    `expand_to(rows)` every continuation row ``i`` reads prompt ``rows[i]``'s K/V before its
    own (``index_select`` — its backward sums the rows' gradients into the prompt's)."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.rows: torch.Tensor | None = None
        self.length = 0

    def expand_to(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def update(
        self, layer_idx: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rows is None:  # the prompt pass: keep, attend as usual
            self.keys[layer_idx], self.values[layer_idx] = k, v
            return k, v
        pk = self.keys[layer_idx].index_select(0, self.rows)
        pv = self.values[layer_idx].index_select(0, self.rows)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    def advance(self, n: int) -> None:
        if self.rows is None:
            self.length += n


def prompt_sharing_supported(model: nn.Module) -> bool:
    """True for an lmforge causal LM that `shared_prompt_logprobs` computes exactly."""
    from lmforge.train.distributed import unwrap

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return False  # DDP / FSDP2 hooks expect one forward per backward
    body = getattr(unwrap(model), "model", None)
    layers = getattr(body, "layers", None)
    if layers is None or getattr(body, "gradient_checkpointing", 0):
        return False
    return all(isinstance(getattr(layer, "self_attn", None), Attention) for layer in layers)


def _completion_spans(labels: torch.Tensor) -> tuple[list[int], list[int]] | None:
    """Per row, ``(start, count)`` of the contiguous scored logits positions, or None."""
    scored = shifted_targets(labels) != IGNORE_INDEX
    counts = scored.sum(-1).tolist()
    starts = scored.float().argmax(-1).tolist()
    for row, (s, c) in enumerate(zip(starts, counts)):
        if c == 0 or s == 0 or not bool(scored[row, s : s + c].all()):
            return None
    return starts, counts


def shared_prompt_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """``(logps, mask, entropy)`` ``[B, T]`` as `lmforge.align.logprobs.model_logprobs` gives
    them, each distinct prompt run once — or None when the batch or model does not allow it
    (see the module docstring). ``labels`` score one contiguous completion per row, after a
    prompt of ≥ 2 tokens (a row's prompt = its tokens before the first scored one)."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    spans = _completion_spans(labels)
    if spans is None or not prompt_sharing_supported(model):
        return None
    starts, counts = spans
    prompts: dict[tuple[int, ...], int] = {}
    prompt_of_row = [
        prompts.setdefault(tuple(input_ids[r, : s + 1].tolist()), len(prompts))
        for r, s in enumerate(starts)
    ]
    if len(prompts) == len(starts):
        return None  # nothing shared
    by_length: dict[int, list[int]] = defaultdict(list)
    for r, s in enumerate(starts):
        by_length[s].append(r)
    b, t = input_ids.shape
    device = input_ids.device
    logps = torch.zeros(b, t, device=device)
    entropy = torch.zeros(b, t, device=device) if with_entropy else None
    mask = torch.zeros(b, t, dtype=torch.bool, device=device)
    for start, bucket in by_length.items():
        cache, prompt_index = _run_prompts(model, input_ids, bucket, start, prompt_of_row)
        for rows in length_chunks([counts[r] for r in bucket]):
            rows = [bucket[i] for i in rows]
            cache.expand_to(
                torch.tensor([prompt_index[prompt_of_row[r]] for r in rows], device=device)
            )
            lp, ent, keep = _continuation(
                model, cache, input_ids, rows, start, counts, temperature, with_entropy
            )
            row_idx = torch.tensor(rows, device=device)[:, None].expand_as(keep)[keep]
            cols = start + torch.arange(keep.shape[1], device=device)
            col_idx = cols[None].expand_as(keep)[keep]
            logps = logps.index_put((row_idx, col_idx), lp[keep].float())
            mask[row_idx, col_idx] = True
            if entropy is not None:
                entropy = entropy.index_put((row_idx, col_idx), ent[keep].float())
    return logps, mask, entropy


def length_chunks(lengths: list[int], max_chunks: int = 4) -> list[list[int]]:
    """Indices of ``lengths`` sorted longest first and cut into 1…``max_chunks`` chunks of
    equal count, each padded to its own longest: the fewest chunks whose padded size is
    within 10 % of the smallest (one forward per chunk; less padding computed)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    options = []
    for k in range(1, min(max_chunks, len(order)) + 1):
        chunks = [c.tolist() for c in torch.tensor(order).tensor_split(k)]
        options.append((sum(lengths[c[0]] * len(c) for c in chunks), chunks))
    best = min(size for size, _ in options)
    return next(chunks for size, chunks in options if size <= 1.1 * best)


def _run_prompts(model, input_ids, rows, start, prompt_of_row):
    """The distinct prompts of ``rows`` (all ``start + 1`` tokens long), their first
    ``start`` tokens run once into a `SharedPromptCache`; returns it and prompt id → row of
    the cache."""
    local: dict[int, int] = {}
    for r in rows:
        local.setdefault(prompt_of_row[r], r)  # prompt id → a batch row that holds it
    cache = SharedPromptCache()
    model(input_ids=input_ids[list(local.values()), :start], cache=cache, logits_to_keep=1)
    return cache, {p: i for i, p in enumerate(local)}


def _continuation(model, cache, input_ids, rows, start, counts, temperature, entropy):
    """Every row's ``[prompt[-1], completion[:-1]]`` on top of its cached prompt. Returns
    the rows' log-probs, entropies (or None) and validity mask, ``[n, C]`` with C the
    longest completion of ``rows``."""
    device = input_ids.device
    width = max(counts[r] for r in rows)
    window = F.pad(input_ids[rows], (0, width + 1))[:, start : start + width + 1]
    lengths = torch.tensor([counts[r] for r in rows], device=device)
    keep = torch.arange(width, device=device)[None, :] < lengths[:, None]
    logits = model(input_ids=window[:, :width], cache=cache).logits
    if temperature != 1.0:
        logits = logits / temperature
    targets = window[:, 1:].masked_fill(~keep, 0)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    ent = entropy_from_logits(logits) if entropy else None
    return lp, ent, keep
