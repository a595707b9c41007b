"""lmforge's fp32 GEMM over a weight packed once into 16-wide panels (a C++ op, AVX2 + FMA).

``y = x Wᵀ`` for ``x [M, K]`` and ``W [N, K]`` (``nn.Linear``'s layout), with ``W`` stored as
``P [⌈N/16⌉, K, 16]``, ``P[p, k, j] = W[16p + j, k]`` (`pack_panels`; zero rows pad the last
panel). A register tile of up to 6 rows × 16 columns (12 accumulators) walks ``k``: per ``k``
one 64-byte panel line, six broadcasts of ``x`` and twelve FMAs — the GEBP micro-kernel of
Goto & van de Geijn (2008) with the weight as the packed operand. A panel stays in L2 while
all tiles of a 72-row chunk of ``x`` pass over it, and the next panel is prefetched while
they do (spread over the tiles), so the weights' DRAM stream overlaps the arithmetic; one row
(batch-1 decoding) runs four panels at once, 8 accumulators (`kernels/panel_gemm.cpp`).

Why: the engine's multi-row fp32 products (decode steps of several requests, verification
forwards, prefill) went through oneDNN's pre-packed ``_linear_pointwise``
(`lmforge.infer.packed_gemm`), one row through lmforge's row-major `lmforge.nn.dense_gemv`.
On an AVX2-only CPU (2-core AMD EPYC, Zen 2, 1 thread; the 30m preset's 33 projections of one
forward, BENCHMARKS.md) oneDNN ran 16 rows in 24.5 ms (41 GFLOP/s) and 512 in 450 ms (72),
the row-major op one row in 9.9–11 ms; this kernel takes 13.2 ms (76), 349 ms (93) and 6.4 ms
(5.5 from huge pages, where the engine's runner keeps the panels). Where the CPU has AVX-512
oneDNN has twice the vector width and is kept: `panel_gemm_preferred` says which to use
(``LMFORGE_PANEL_GEMM=1`` forces the panels, ``=0`` turns them off).

Weight-only int8 (`int8_panel_gemm`, `pack_int8_panels`): the same panels holding int8 codes
``q`` (16 bytes per ``k``), widened to fp32 in the tile's registers, the sums scaled per
output, ``y = s ⊙ (x qᵀ)``: a quarter of the fp32 panels' bytes for the same FMAs. 30m shapes,
all 32 layer products, 1 thread: 16 rows 8.55 ms (87 GFLOP/s; fp32 panels 9.38: the 16-row
product is bound by the weights' stream, which int8 shrinks), 64 rows 32.5 (fp32 30.5: the
widening costs a little where the FMAs bound it), one row 1.97 ms (from huge pages 1.85 ms
against `lmforge.nn.int8_gemv`'s row-major 1.74, which the engine keeps for one row).

Numerics: fp32 products, each output a sum over ``k`` in ascending order (one accumulator
per output): equal to ``F.linear`` within fp32 rounding. ``portable=True`` runs the
non-SIMD loop (tests): the same order, without fused multiply-adds.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from lmforge.nn.cpp_ops import cpp_ops_unavailable_reason

__all__ = [
    "PANEL",
    "int8_panel_gemm",
    "pack_int8_panels",
    "pack_panels",
    "panel_gemm",
    "panel_gemm_available",
    "panel_gemm_preferred",
    "panel_gemm_unavailable_reason",
]

PANEL = 16  # output columns per panel


def panel_gemm_unavailable_reason() -> str | None:
    """Why the op cannot run here (building lmforge's C++ ops on the first call), or None."""
    if os.environ.get("LMFORGE_PANEL_GEMM", "") == "0":
        return "turned off by LMFORGE_PANEL_GEMM=0"
    return cpp_ops_unavailable_reason()


def panel_gemm_available() -> bool:
    """Whether `panel_gemm` can run (builds the op on the first call; never raises)."""
    return panel_gemm_unavailable_reason() is None


def panel_gemm_preferred() -> bool:
    """Whether the engine should run its multi-row fp32 CPU products through the panels
    rather than oneDNN: the op runs, with AVX2 + FMA, and the CPU has no AVX-512 (where
    oneDNN's kernels are twice as wide); ``LMFORGE_PANEL_GEMM=1`` forces it."""
    if not panel_gemm_available() or torch.ops.lmforge_ext.panel_gemm_isa() != "avx2":
        return False
    if os.environ.get("LMFORGE_PANEL_GEMM", "") == "1":
        return True
    return not torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def pack_panels(weight: torch.Tensor) -> torch.Tensor:
    """``W [N, K]`` → contiguous ``P [⌈N/16⌉, K, 16]`` with ``P[p, k, j] = W[16p + j, k]``
    (rows past ``N`` are zeros). fp32 only."""
    if weight.dim() != 2 or weight.dtype != torch.float32:
        raise ValueError(
            f"pack_panels takes a 2-D fp32 weight, got {tuple(weight.shape)} {weight.dtype}"
        )
    return _panels(weight)


def pack_int8_panels(codes: torch.Tensor) -> torch.Tensor:
    """Int8 codes ``q [N, K]`` (`lmforge.nn.quant.Int8Linear`'s weight) → contiguous int8
    panels ``[⌈N/16⌉, K, 16]``, laid out as `pack_panels` (16 bytes per ``k``)."""
    if codes.dim() != 2 or codes.dtype != torch.int8:
        raise ValueError(
            f"pack_int8_panels takes 2-D int8 codes, got {tuple(codes.shape)} {codes.dtype}"
        )
    return _panels(codes)


def _panels(weight: torch.Tensor) -> torch.Tensor:
    n, k = weight.shape
    pad = (-n) % PANEL
    w = F.pad(weight.detach(), (0, 0, 0, pad)) if pad else weight.detach()
    return w.reshape(-1, PANEL, k).transpose(1, 2).contiguous()


def panel_gemm(
    x: torch.Tensor, panels: torch.Tensor, n: int, portable: bool = False
) -> torch.Tensor:
    """``x Wᵀ`` (fp32 ``[M, n]``) for fp32 ``x [M, K]`` and ``panels = pack_panels(W)`` of
    ``W [n, K]``. Call `panel_gemm_available` first."""
    return torch.ops.lmforge_ext.panel_gemm(x, panels, n, portable)


def int8_panel_gemm(
    x: torch.Tensor, panels: torch.Tensor, scales: torch.Tensor, n: int, portable: bool = False
) -> torch.Tensor:
    """``y[m, j] = s_j Σ_k x[m, k] q[j, k]`` (fp32 ``[M, n]``): weight-only int8 (Jacob et al.
    2018, eq. 1, zero weight offset) for fp32 ``x [M, K]``, ``panels = pack_int8_panels(q)``
    of codes ``q [n, K]`` and fp32 ``scales [n]``; the codes widened to fp32 in registers, so
    the panels stream a quarter of the fp32 bytes. Call `panel_gemm_available` first."""
    return torch.ops.lmforge_ext.int8_panel_gemm(x, panels, scales, n, portable)
