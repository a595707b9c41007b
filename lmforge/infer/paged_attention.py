"""Decode attention that reads the paged KV cache in place (a C++ op, `lmforge.nn.cpp_ops`).

One query per sequence over its cached context (Vaswani et al. 2017, eq. 1):

    out[r, h] = Σ_t softmax_t(q[r, h] · k[slot(r, t), g(h)] / √D) v[slot(r, t), g(h)]

for the row's visible tokens ``t ∈ [max(0, len_r − window), len_r)``, where
``slot(r, t) = tables[r, t // block_size] · block_size + t mod block_size`` and
``g(h) = h // (H / H_kv)`` (GQA). The eager path (`lmforge.infer.cache.PagedBatch`) otherwise
gathers each row's blocks into a contiguous copy, builds a mask and calls SDPA: three ops and
a copy of the context per layer, which for small models cost as much as the projections
(GRPO rollouts on the 5m preset, 32 rows: gather + SDPA ≈ 3.3 of ≈ 9.4 ms per step).
"""

from __future__ import annotations

import math

import torch

from lmforge.nn.cpp_ops import cpp_ops_available

__all__ = ["paged_attention_supported", "paged_decode_attention"]


def paged_attention_supported(q: torch.Tensor, keys: torch.Tensor) -> bool:
    """Whether the op can take this step: CPU fp32 tensors and the op built here."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.float32
        and keys.dtype == torch.float32
        and cpp_ops_available()
    )


def paged_decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tables: torch.Tensor,
    lengths: torch.Tensor,
    block_size: int,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """``q`` ``[n, H, D]``, the layer's cache ``keys`` / ``values`` ``[slots, H_kv, D]``, block
    ``tables`` ``[n, W]`` and visible ``lengths`` ``[n]`` (position + 1) → ``[n, H, D]``.
    Call `paged_attention_supported` first."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.ops.lmforge_ext.paged_decode_attention(
        q.contiguous(),
        keys,
        values,
        tables.to(torch.int64).contiguous(),
        lengths.to(torch.int64).contiguous(),
        block_size,
        scale,
        -1 if window is None else int(window),
    )
