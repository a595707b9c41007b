"""lmforge's one-row fp32 product (a C++ op): ``y_n = Σ_k W_nk x_k``.

The product of every batch-1 fp32 decode step: one activation row ``x [1, K]`` times the
model's own weights ``W [N, K]`` (``nn.Linear``'s ``[out, in]`` layout, no copy), each weight
streamed once. Batch-1 decoding is bound by reading the weights, so what counts is the
bandwidth of that stream: MKL's GEMV over the runner's transposed copy reads a 30m model's
126 MB of projections at ≈ 11 GB/s from one core, inductor's row reduction
(`lmforge.infer.decode_step._row_product`, one vector accumulator per row) at ≈ 19–26 GB/s,
and ``kernels/gemv.cpp`` — one row at a time, 8 independent 16-lane accumulators (128
weights per step), no software prefetch (the hardware prefetcher keeps up at one FMA per
64 B; every distance tried was slower) — at ≈ 23–29 GB/s, 31 GB/s from huge pages
(`lmforge.nn.huge_pages`). Several weights that share ``x`` (q/k/v, gate/up) go through one
call, outputs concatenated; output rows are split over torch's intra-op threads.

Measured (1 thread, all 33 products of a 30m token, medians of 15 rounds alternated in one
process, another job's training on the second core): MKL ``x @ Wᵀ`` 11.7 ms (10.8 GB/s),
inductor's row reduction 6.5 ms (19.3 GB/s), this op 5.2–5.4 ms (23–24 GB/s).

Numerics: fp32 products and sums, in a different order than MKL's (equal within float
rounding). The op is one of lmforge's C++ ops (`lmforge.nn.cpp_ops`, built on first use, never
fatal): `f32_gemv_available` is false where they do not build, or with
``LMFORGE_F32_GEMV=0`` (this op alone).
"""

from __future__ import annotations

import os

import torch

from lmforge.nn.cpp_ops import cpp_ops_unavailable_reason

__all__ = ["f32_gemv", "f32_gemv_available", "f32_gemv_parts", "f32_gemv_unavailable_reason"]


def f32_gemv_unavailable_reason() -> str | None:
    """Why the op cannot run here (building lmforge's C++ ops on the first call), or None."""
    if os.environ.get("LMFORGE_F32_GEMV", "1") == "0":
        return "turned off by LMFORGE_F32_GEMV=0"
    return cpp_ops_unavailable_reason()


def f32_gemv_available() -> bool:
    """Whether `f32_gemv` can run (builds the op on the first call; never raises)."""
    return f32_gemv_unavailable_reason() is None


def f32_gemv_parts(
    x: torch.Tensor,
    weights: list[torch.Tensor] | tuple[torch.Tensor, ...],
    portable: bool = False,
) -> torch.Tensor:
    """``[W_1 x ‖ W_2 x ‖ …]``: the products of one fp32 row ``x`` (``[K]`` or ``[1, K]``)
    with fp32 weights ``W_i [N_i, K]``, concatenated (``[ΣN_i]`` or ``[1, ΣN_i]``).
    ``portable`` forces the non-AVX-512 loop (tests). Call `f32_gemv_available` first."""
    return torch.ops.lmforge_ext.f32_gemv(x, list(weights), portable)


def f32_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y_n = Σ_k W_nk x_k`` for fp32 ``x [1, K]`` (or ``[K]``) and ``W [N, K]`` → ``[1, N]``
    (or ``[N]``). Call `f32_gemv_available` first."""
    return torch.ops.lmforge_ext.f32_gemv(x, [w], False)
