"""lmforge's one-row dense product (a C++ op): ``y_n = Σ_k W_nk x_k``, fp32 or bf16 ``W``.

The product of every batch-1 decode step of a dense model: one fp32 activation row ``x [1, K]``
times the model's own weights ``W [N, K]`` (``nn.Linear``'s ``[out, in]`` layout, no copy),
each weight streamed once. With bf16 weights ``x`` is rounded to bf16 first (as a bf16
``F.linear`` does; exact for a bf16 model's activations), every product is exact in fp32 and
the sums are fp32: on CPUs with AVX512_BF16 by ``VDPBF16PS`` (32 products per instruction,
one per 64 B of weights), elsewhere by widening the weights in registers (a bf16 is the top
half of an fp32). Half the bytes of fp32; MKL's bf16 GEMV, which a bf16 model's
``F.linear`` reaches on the CPU, ran the 30m preset's eager decode at 87 tok/s against fp32's
159. Batch-1 decoding is bound by reading the weights, so what counts is the
bandwidth of that stream: MKL's GEMV over the runner's transposed copy reads a 30m model's
126 MB of projections at ≈ 11 GB/s from one core, and ``kernels/gemv.cpp`` — one row at a
time, 8 independent 16-lane accumulators (128 weights per step), no software prefetch (the
hardware prefetcher keeps up at one FMA per 64 B; every distance tried was slower) — at ≈
23–29 GB/s, 31 GB/s from huge pages (`lmforge.nn.huge_pages`). Several weights that share
``x`` (q/k/v, gate/up) go through one call, outputs concatenated; output rows are split over
torch's intra-op threads.

Measured (1 thread, all 33 products of a 30m token, medians of 15 rounds alternated in one
process, another job's training on the second core): MKL ``x @ Wᵀ`` 11.7 ms (10.8 GB/s),
this op 5.2–5.4 ms (23–24 GB/s). Inside the compiled decode step inductor's own row
reduction (`lmforge.infer.decode_step._row_product`) was as fast for fp32 (30m, 128 tokens:
227 vs 213 tok/s with the op; 5m 1,550 vs 1,276), so fp32 keeps it there; bf16 uses the op.

Numerics: fp32 products and sums, in a different order than MKL's (equal within float
rounding; for bf16 weights, closer to the exact product than bf16 ``F.linear``, which rounds
its output to bf16 — the caller casts back). The op is one of lmforge's C++ ops
(`lmforge.nn.cpp_ops`, built on first use, never fatal): `dense_gemv_available` is false where
they do not build, or with ``LMFORGE_DENSE_GEMV=0`` (this op alone).
"""

from __future__ import annotations

import os

import torch

from lmforge.nn.cpp_ops import cpp_ops_unavailable_reason

__all__ = [
    "dense_gemv",
    "dense_gemv_available",
    "dense_gemv_parts",
    "dense_gemv_unavailable_reason",
]


def dense_gemv_unavailable_reason() -> str | None:
    """Why the op cannot run here (building lmforge's C++ ops on the first call), or None."""
    if os.environ.get("LMFORGE_DENSE_GEMV", "1") == "0":
        return "turned off by LMFORGE_DENSE_GEMV=0"
    return cpp_ops_unavailable_reason()


def dense_gemv_available() -> bool:
    """Whether `dense_gemv` can run (builds the op on the first call; never raises)."""
    return dense_gemv_unavailable_reason() is None


def dense_gemv_parts(
    x: torch.Tensor,
    weights: list[torch.Tensor] | tuple[torch.Tensor, ...],
    portable: bool = False,
) -> torch.Tensor:
    """``[W_1 x ‖ W_2 x ‖ …]``: the products of one fp32 row ``x`` (``[K]`` or ``[1, K]``)
    with fp32 or bf16 weights ``W_i [N_i, K]`` (one dtype; bf16: ``x`` rounded to bf16 first),
    concatenated (fp32, ``[ΣN_i]`` or ``[1, ΣN_i]``).
    ``portable`` forces the non-AVX-512 loop (tests). Call `dense_gemv_available` first."""
    return torch.ops.lmforge_ext.dense_gemv(x, list(weights), portable)


def dense_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y_n = Σ_k W_nk x_k`` for fp32 ``x [1, K]`` (or ``[K]``) and fp32 or bf16 ``W [N, K]``
    → fp32 ``[1, N]`` (or ``[N]``). Call `dense_gemv_available` first."""
    return torch.ops.lmforge_ext.dense_gemv(x, [w], False)
