"""A decoder layer's work around its attention for a decode step's few tokens, as two C++ ops.

The eager engine's batch-1 step ran ≈ 35 PyTorch ops per layer around the projections (two
RMSNorms — torch's CPU RMSNorm alone is a composite of ≈ 9 ops, ≈ 20 µs for a 512-vector —
the RoPE's neg/cat/mul/add, slices, residual adds, SiLU and the product) and their Python:
the same 8-layer runner at hidden size 64 (all overhead) stepped in 2.55 ms, beside the 30m
preset's ≈ 5.7 ms of projections per token, so the default engine trailed llama.cpp while the
compiled step led it. With these ops that runner steps in 1.31 ms (BENCHMARKS.md).
Here each layer is `decode_pre` → the engine's paged attention → `decode_post`
(`kernels/decode_layer.cpp`; fp32 on the CPU, each row of ``x`` its own token, as in a decode
step with one token per sequence):

* ``decode_pre``: ``h = RMSNorm(x)`` (Zhang & Sennrich 2019, eq. 4), ``qkv = h W_qkvᵀ (+ b)``
  through lmforge's panel product (`lmforge.nn.panel_gemm`), RoPE on the q and k heads in the
  half-split layout (``x cos + rotate_half(x) sin``, Su et al. 2021, eq. 34);
* ``decode_post``: ``x' = x + a W_oᵀ (+ b)``, ``h = RMSNorm(x')``, ``[g; u] = h W_guᵀ (+ b)``,
  ``x'' = x' + (silu(g) ⊙ u) W_downᵀ (+ b)`` (SwiGLU, Shazeer 2020).

Numerics: fp32 throughout except the RMSNorm's mean of squares, summed in double; equal to the
runner's PyTorch path within float rounding (not bit for bit: the runner's fp32 panel
products already differ from ``F.linear`` in summation order). Where the ops do not build,
or with ``LMFORGE_DECODE_LAYER=0``, `decode_layer_available` is false and the runner keeps
its PyTorch path.
"""

from __future__ import annotations

import os

import torch

from lmforge.nn.cpp_ops import cpp_ops_unavailable_reason

__all__ = ["decode_layer_available", "decode_post", "decode_pre"]


def decode_layer_available() -> bool:
    """Whether the two ops can run here (builds lmforge's C++ ops on the first call)."""
    if os.environ.get("LMFORGE_DECODE_LAYER", "1") == "0":
        return False
    return cpp_ops_unavailable_reason() is None


def decode_pre(
    x: torch.Tensor, norm: torch.Tensor, eps: float, panels: torch.Tensor, n: int,
    bias: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, rotated: int,
    head_dim: int,
) -> torch.Tensor:  # fmt: skip
    """``[M, n]``: RoPE(RMSNorm(x; norm, eps) Wᵀ + bias) for tokens ``x [M, H]``, ``W [n, H]``
    given as its panels; the first ``rotated`` heads of ``head_dim`` of each row rotated by
    that row's ``cos`` / ``sin`` ``[M, head_dim]`` (the q and k heads of a fused q/k/v)."""
    return torch.ops.lmforge_ext.decode_pre(
        x, norm, eps, panels, n, bias, cos, sin, rotated, head_dim
    )


def decode_post(
    x: torch.Tensor, attn: torch.Tensor, o: tuple[torch.Tensor, torch.Tensor | None],
    norm: torch.Tensor, eps: float, gate_up: tuple[torch.Tensor, torch.Tensor | None],
    inter: int, down: tuple[torch.Tensor, torch.Tensor | None],
) -> torch.Tensor:  # fmt: skip
    """``[M, H]``: the layer's output for tokens ``x [M, H]`` (its input), ``attn`` the
    attention's output ``[M, heads·head_dim]``; ``o``, ``gate_up``, ``down`` are (panels,
    bias) of the output projection, the fused SwiGLU gate/up (``2·inter`` outputs, gate
    first) and the down projection."""
    return torch.ops.lmforge_ext.decode_post(
        x, attn.contiguous(), o[0], o[1], norm, eps, gate_up[0], gate_up[1], inter, down[0],
        down[1],
    )  # fmt: skip
