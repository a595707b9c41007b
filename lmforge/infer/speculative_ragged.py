"""Ragged batches for batched drafting (`lmforge.infer.speculative_batch`): requests with
their own contiguous KV caches and their own numbers of new positions run as one padded
batch, and what the batched forward computed goes back into each request's own cache.

`RaggedKVCache` is the `lmforge.nn.attention.LayerCache` of such a forward (the model's
attention layers call ``update`` as with a `KVCache`); its key-validity mask goes to the
model as ``attention_mask`` (or into an `AttentionBatch`), so padding is never attended.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmforge.models.kv_cache import KVCache

__all__ = ["RaggedKVCache", "left_aligned", "pad_rows", "valid_rows"]


class RaggedKVCache:
    """B requests' contiguous caches as one batch for batched forwards (a `LayerCache`).

    Per layer a buffer ``[B, H_kv, P + extra, D]``: row b's ``past[b]`` cached positions fill
    slots ``0 … past[b] − 1``, slots up to P = max(past) are padding, and the new K/V of every
    forward is appended after slot ``length`` (P at first) for all rows alike. `extend` marks
    which of a forward's new slots hold real positions (``key_valid``) before it runs;
    `commit` writes a row's real new K/V back into its own cache."""

    def __init__(self, caches: Sequence[KVCache], layers: Sequence[int], extra: int) -> None:
        self.past = [c.length for c in caches]
        self.length = max(self.past)
        size = self.length + extra
        first = caches[0]
        device = first.keys[layers[0]].device
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        for layer in layers:
            k0, v0 = first.keys[layer], first.values[layer]
            k = k0.new_zeros(len(caches), k0.shape[1], size, k0.shape[3])
            v = v0.new_zeros(len(caches), v0.shape[1], size, v0.shape[3])
            for b, cache in enumerate(caches):
                k[b, :, : self.past[b]] = cache.keys[layer][0, :, : self.past[b]]
                v[b, :, : self.past[b]] = cache.values[layer][0, :, : self.past[b]]
            self.keys[layer], self.values[layer] = k, v
        slots = torch.arange(size, device=device)
        self.key_valid = slots[None] < torch.tensor(self.past, device=device)[:, None]
        self.new_slots: list[list[int]] = [[] for _ in caches]

    def extend(self, valid: torch.Tensor) -> torch.Tensor:
        """Mark the next forward's ``T`` new slots (``valid`` ``[B, T]`` bool: real
        positions) and return the key mask ``[B, length + T]`` it attends with."""
        t = valid.shape[1]
        self.key_valid[:, self.length : self.length + t] = valid
        for b, row in enumerate(valid.tolist()):
            self.new_slots[b].extend(self.length + j for j, ok in enumerate(row) if ok)
        return self.key_valid[:, : self.length + t]

    def update(
        self, layer_idx: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def commit(self, b: int, cache: KVCache, length: int) -> None:
        """Row ``b``'s cache becomes its first ``length`` positions: its past, then its real
        new positions in order (``length`` below its past crops)."""
        keep = max(0, length - self.past[b])
        if keep:
            src = torch.tensor(self.new_slots[b][:keep], device=cache.keys[0].device)
            end = self.past[b] + keep
            for layer in self.keys:
                cache.keys[layer][0, :, self.past[b] : end] = self.keys[layer][b][:, src]
                cache.values[layer][0, :, self.past[b] : end] = self.values[layer][b][:, src]
        cache.length = length


def pad_rows(rows: Sequence[torch.Tensor], length: int, fill: float = 0) -> torch.Tensor:
    """``[B, length, …]`` from ``rows`` of ``[n_b, …]`` (n_b ≤ length), right-padded."""
    out = rows[0].new_full((len(rows), length, *rows[0].shape[1:]), fill)
    for b, row in enumerate(rows):
        out[b, : row.shape[0]] = row
    return out


def valid_rows(lengths: Sequence[int], length: int, device) -> torch.Tensor:
    """``[B, length]`` bool: True at the first ``lengths[b]`` entries of row b."""
    return torch.arange(length, device=device)[None] < torch.tensor(lengths, device=device)[:, None]


def left_aligned(parts: Sequence[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    """``[B, H, P, D]`` from per-row ``[1, H, p_b, D]`` (None: p_b = 0), zero-padded after."""
    size = max((p.shape[2] for p in parts if p is not None), default=0)
    out = like.new_zeros(len(parts), like.shape[1], size, like.shape[3])
    for b, p in enumerate(parts):
        if p is not None:
            out[b, :, : p.shape[2]] = p[0]
    return out
