"""Decode attention over a paged KV cache on the CPU: lmforge's C++ op vs gather + mask + SDPA.

One query per row over its cached context, the K/V read through each row's block table
(`lmforge.infer.paged_attention.paged_decode_attention`), against what a PyTorch engine does
without it: gather each row's blocks into a contiguous copy, build the length mask and call
``F.scaled_dot_product_attention`` (GQA through ``enable_gqa``). Both sides run the same
cache, tables and queries in one process, alternated call by call; the outputs are checked
equal (within 1e-4) first. The cache is allocated like the engine's (blocks handed out in
order, each row's blocks after the previous row's) and larger than the last-level cache, so
the K/V come from memory as in decoding; the shapes are those of the GRPO rollouts (5m
preset), 16 requests on the 30m preset, and batch-1 decoding.

    python bench/paged_attention.py [--threads 1] [--calls 200]

Last line: ``RESULT paged_attention speedup=<geometric mean over shapes of SDPA ms ÷ op ms>
min=<smallest> max=<largest>``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from lmforge.infer.paged_attention import paged_decode_attention
from lmforge.nn.cpp_ops import cpp_ops_available, cpp_ops_unavailable_reason

# (name, rows, query heads, K/V heads, head size, context tokens)
SHAPES = [
    ("GRPO rollout, 5m", 32, 4, 4, 64, 70),
    ("16 requests, 30m", 16, 8, 4, 64, 100),
    ("16 rows, 30m, long", 16, 8, 4, 64, 500),
    ("batch 1, 30m", 1, 8, 4, 64, 100),
    ("batch 1, 30m, long", 1, 8, 4, 64, 1000),
    ("batch 1, D 128", 1, 16, 8, 128, 300),
]
BLOCK = 16
CACHE_BYTES = 256 << 20  # K and V together: past any last-level cache


def make_case(rows: int, heads: int, kv_heads: int, d: int, context: int, layers: int):
    """``layers`` caches (so successive calls read cold memory), tables and lengths."""
    width = math.ceil(context / BLOCK)
    per_layer = max(rows * width, CACHE_BYTES // (layers * 2 * BLOCK * kv_heads * d * 4))
    g = torch.Generator().manual_seed(0)
    caches = [
        (
            torch.randn(per_layer * BLOCK, kv_heads, d, generator=g),
            torch.randn(per_layer * BLOCK, kv_heads, d, generator=g),
        )
        for _ in range(layers)
    ]
    tables = torch.arange(rows * width).view(rows, width)
    lengths = torch.tensor([context - (r % 7) for r in range(rows)])  # ragged, like decoding
    q = torch.randn(rows, heads, d, generator=g)
    return caches, tables, lengths, q


def op_attention(q, keys, values, tables, lengths):
    """lmforge's op: the blocks read in place through the table."""
    return paged_decode_attention(q, keys, values, tables, lengths, BLOCK)


def sdpa_attention(q, keys, values, tables, lengths):
    """The gather path: each row's blocks copied out, a length mask, SDPA."""
    n, h, d = q.shape
    hkv = keys.shape[1]
    k = keys.view(-1, BLOCK, hkv, d)[tables].view(n, -1, hkv, d).transpose(1, 2)
    v = values.view(-1, BLOCK, hkv, d)[tables].view(n, -1, hkv, d).transpose(1, 2)
    mask = torch.arange(k.shape[2])[None, :] < lengths[:, None]  # [n, T]
    out = F.scaled_dot_product_attention(
        q[:, :, None], k, v, attn_mask=mask[:, None, None], enable_gqa=h != hkv
    )
    return out[:, :, 0]


def time_calls(fn, caches, calls: int) -> float:
    """Median ms per call, cycling through the layers' caches."""
    times = []
    for i in range(calls):
        keys, values = caches[i % len(caches)]
        t = time.perf_counter()
        fn(keys, values)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not cpp_ops_available():
        raise SystemExit(f"lmforge's C++ ops are unavailable: {cpp_ops_unavailable_reason()}")
    print(f"{args.threads} thread(s), {args.calls} calls per side, block size {BLOCK}")
    speedups = []
    for name, rows, heads, kv_heads, d, context in SHAPES:
        caches, tables, lengths, q = make_case(rows, heads, kv_heads, d, context, layers=8)
        keys, values = caches[0]
        ours = paged_decode_attention(q, keys, values, tables, lengths, BLOCK)
        ref = sdpa_attention(q, keys, values, tables, lengths)
        err = (ours - ref).abs().max().item()
        if err > 1e-4:
            raise SystemExit(f"{name}: the op differs from SDPA by {err:.2e}")
        op = partial(op_attention, q, tables=tables, lengths=lengths)
        ref_fn = partial(sdpa_attention, q, tables=tables, lengths=lengths)
        op_ms, sdpa_ms = [], []
        for _ in range(3):  # alternate the two sides
            op_ms.append(time_calls(op, caches, args.calls // 3))
            sdpa_ms.append(time_calls(ref_fn, caches, args.calls // 3))
        a, b = statistics.median(op_ms), statistics.median(sdpa_ms)
        speedups.append(b / a)
        kv_mb = rows * context * kv_heads * d * 4 * 2 / 1e6
        print(
            f"{name:22s} {rows:2d} rows × {heads} ({kv_heads}) heads × D {d}, {context} tokens: "
            f"op {a:.3f} ms ({kv_mb / a:.1f} GB/s of K/V), gather + SDPA {b:.3f} ms, "
            f"×{b / a:.2f} (max |diff| {err:.1e})"
        )
    gm = math.exp(sum(map(math.log, speedups)) / len(speedups))
    print(
        f"RESULT paged_attention speedup={gm:.2f} min={min(speedups):.2f} max={max(speedups):.2f}"
    )


if __name__ == "__main__":
    main()
