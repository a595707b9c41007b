"""Decode attention that reads the paged KV cache in place (a C++ op, `lmforge.nn.cpp_ops`).

One query per sequence over its cached context (Vaswani et al. 2017, eq. 1):

    out[r, h] = Σ_t softmax_t(q[r, h] · k[slot(r, t), g(h)] / √D) v[slot(r, t), g(h)]

for the row's visible tokens ``t ∈ [max(0, len_r − window), len_r)``, where
``slot(r, t) = tables[r, t // block_size] · block_size + t mod block_size`` and
``g(h) = h // (H / H_kv)`` (GQA). The eager path (`lmforge.infer.cache.PagedBatch`) otherwise
gathers each row's blocks into a contiguous copy, builds a mask and calls SDPA: three ops and
a copy of the context per layer, which for small models cost as much as the projections
(GRPO rollouts on the 5m preset, 32 rows: gather + SDPA ≈ 3.3 of ≈ 9.4 ms per step).

The cache may be fp32, fp16 or bf16 (`KV_DTYPES`; an engine's ``kv_cache_dtype``) beside fp32
queries: each K/V element is widened to fp32 as it is loaded (F16C on AVX2, ``vcvtph2ps`` on
AVX-512, a shift for bf16), the arithmetic fp32 as before. 30m preset, 16 requests of 64 + 64
tokens, eager engine, 1 thread: an fp16 cache 611 → 621 tok/s, bf16 626 (the attention is
not bound by the cache's bytes alone here), with the same greedy tokens.
"""

from __future__ import annotations

import math

import torch

from lmforge.nn.cpp_ops import cpp_ops_available

__all__ = ["KV_DTYPES", "paged_attention_supported", "paged_decode_attention", "paged_kv_supported"]

# K/V cache dtypes the op reads (fp16 / bf16 widened to fp32 as loaded: a half-size cache)
KV_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def paged_kv_supported(keys: torch.Tensor) -> bool:
    """Whether the op can read this K/V cache: a CPU tensor of a `KV_DTYPES` dtype, the op
    built here."""
    return keys.device.type == "cpu" and keys.dtype in KV_DTYPES and cpp_ops_available()


def paged_attention_supported(q: torch.Tensor, keys: torch.Tensor) -> bool:
    """Whether the op can take this step: fp32 CPU queries and a cache `paged_kv_supported`."""
    return q.device.type == "cpu" and q.dtype == torch.float32 and paged_kv_supported(keys)


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
    """``q`` ``[n, H, D]`` (fp32), the layer's cache ``keys`` / ``values`` ``[slots, H_kv, D]``
    (fp32, fp16 or bf16), block
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
