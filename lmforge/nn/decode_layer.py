"""A decoder layer's work around its attention as two C++ ops (any step: decode or prefill),
and a whole step's layers as one.

The eager engine's batch-1 step ran ≈ 35 PyTorch ops per layer around the projections (two
RMSNorms — torch's CPU RMSNorm alone is a composite of ≈ 9 ops, ≈ 20 µs for a 512-vector —
the RoPE's neg/cat/mul/add, slices, residual adds, SiLU and the product) and their Python:
the same 8-layer runner at hidden size 64 (all overhead) stepped in 2.55 ms, beside the 30m
preset's ≈ 5.7 ms of projections per token, so the default engine trailed llama.cpp while the
compiled step led it. With the two per-layer ops that runner steps in 1.31 ms; with
`decode_layers` (below) the per-layer Python is gone too (BENCHMARKS.md).
Here each layer is `decode_pre` → the engine's paged attention → `decode_post`
(`kernels/decode_layer.cpp`; fp32 on the CPU, each row of ``x`` its own token with its own
position, so a prefill's rows run the same way as a decode step's):

* ``decode_pre``: ``h = RMSNorm(x)`` (Zhang & Sennrich 2019, eq. 4), ``qkv = h W_qkvᵀ (+ b)``,
  RoPE on the q and k heads in the half-split layout (``x cos + rotate_half(x) sin``, Su et
  al. 2021, eq. 34);
* ``decode_post``: ``x' = x + a W_oᵀ (+ b)``, ``h = RMSNorm(x')``, ``[g; u] = h W_guᵀ (+ b)``,
  ``x'' = x' + (silu(g) ⊙ u) W_downᵀ (+ b)`` (SwiGLU, Shazeer 2020).

`decode_layers` runs every layer of a step whose tokens are each a row of its sequence at its
own visible length (a decode step's next tokens; a prefill chunk's tokens at lengths p + 1) in
one call: per layer ``decode_pre``, the step's k/v rows written into the paged cache (rounded
as ``Tensor.to`` rounds them where the cache is fp16 or bf16),
`lmforge.infer.paged_attention`'s kernel over each row's blocks, ``decode_post``; in the last
layer only the rows that give logits go past the K/V writes (``keep``) — the engine's runner
passes the layers' weights once flattened (`StackWeights`).

Each weight ``W`` is given as a `Weight`: the runner's fp32 panel copy (a tensor from
`lmforge.nn.panel_gemm.pack_panels`: lmforge's panel product) or, for weight-only int8
(`lmforge.nn.quant.Int8Linear`), a pair (int8 weight, scales ``s [n]`` fp32) computing
``y = s ⊙ (q x)``: the int8 panels ``[⌈n/16⌉, K, 16]`` of `pack_int8_panels` (the panel
product with the codes widened in registers: any number of rows), or the codes ``q [n, K]``
themselves, by the one-row loop of `lmforge.nn.int8_gemv` — each row's products equal that
op's bit for bit, the codes streamed once per row (so those suit one-token steps).

Numerics: fp32 throughout except the RMSNorm's mean of squares, summed in double; equal to the
runner's PyTorch path within float rounding (not bit for bit: the norm and RoPE round
differently from torch's kernels, and the fp32 panel products differ from ``F.linear`` in
summation order). Where the ops do not build,
or with ``LMFORGE_DECODE_LAYER=0``, `decode_layer_available` is false and the runner keeps
its PyTorch path.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from lmforge.nn.cpp_ops import cpp_ops_unavailable_reason

__all__ = [
    "StackWeights",
    "Weight",
    "decode_layer_available",
    "decode_layers",
    "decode_post",
    "decode_pre",
]

# fp32 panels ``[⌈n/16⌉, K, 16]``, or int8 panels ``[⌈n/16⌉, K, 16]`` / codes ``[n, K]``
# with fp32 scales ``[n]``
Weight = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _parts(weight: Weight) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (weight, None) if isinstance(weight, torch.Tensor) else weight


def decode_layer_available() -> bool:
    """Whether the two ops can run here (builds lmforge's C++ ops on the first call)."""
    if os.environ.get("LMFORGE_DECODE_LAYER", "1") == "0":
        return False
    return cpp_ops_unavailable_reason() is None


def decode_pre(
    x: torch.Tensor, norm: torch.Tensor, eps: float, weight: Weight, n: int,
    bias: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, rotated: int,
    head_dim: int,
) -> torch.Tensor:  # fmt: skip
    """``[M, n]``: RoPE(RMSNorm(x; norm, eps) Wᵀ + bias) for tokens ``x [M, H]``, ``W [n, H]``
    given as a `Weight`; the first ``rotated`` heads of ``head_dim`` of each row rotated by
    that row's ``cos`` / ``sin`` ``[M, head_dim]`` (the q and k heads of a fused q/k/v)."""
    w, scale = _parts(weight)
    return torch.ops.lmforge_ext.decode_pre(
        x, norm, eps, w, scale, n, bias, cos, sin, rotated, head_dim
    )


def decode_post(
    x: torch.Tensor, attn: torch.Tensor, o: tuple[Weight, torch.Tensor | None],
    norm: torch.Tensor, eps: float, gate_up: tuple[Weight, torch.Tensor | None],
    inter: int, down: tuple[Weight, torch.Tensor | None],
) -> torch.Tensor:  # fmt: skip
    """``[M, H]``: the layer's output for tokens ``x [M, H]`` (its input), ``attn`` the
    attention's output ``[M, heads·head_dim]``; ``o``, ``gate_up``, ``down`` are (`Weight`,
    bias) of the output projection, the fused SwiGLU gate/up (``2·inter`` outputs, gate
    first) and the down projection."""
    return torch.ops.lmforge_ext.decode_post(
        x, attn.contiguous(), *_parts(o[0]), o[1], norm, eps, *_parts(gate_up[0]), gate_up[1],
        inter, *_parts(down[0]), down[1],
    )  # fmt: skip


@dataclass(frozen=True)
class StackWeights:
    """Every layer's weights for `decode_layers`, flattened once (the runner builds it when
    its copies change): layer ``l``'s two norms at ``norms[2l]``, ``norms[2l + 1]`` (their
    eps in ``eps``), its q/k/v, o, gate/up and down projections at ``weights[4l + j]`` with
    their int8 scales (None for panels) and biases at the same index, its sliding window
    (``-1``: none) at ``windows[l]``."""

    norms: list[torch.Tensor]
    eps: list[float]
    weights: list[torch.Tensor]
    scales: list[torch.Tensor | None]
    biases: list[torch.Tensor | None]
    windows: list[int]

    @classmethod
    def of(cls, layers: list[tuple]) -> StackWeights:
        """From per-layer tuples ``(norm1, eps1, norm2, eps2, window, (qkv, o, gate_up,
        down))``, each projection a (`Weight`, bias) pair."""
        norms, eps, weights, scales, biases, windows = [], [], [], [], [], []
        for norm1, eps1, norm2, eps2, window, projections in layers:
            norms += [norm1, norm2]
            eps += [float(eps1), float(eps2)]
            windows.append(-1 if window is None else int(window))
            for weight, bias in projections:
                w, scale = _parts(weight)
                weights.append(w)
                scales.append(scale)
                biases.append(bias)
        return cls(norms, eps, weights, scales, biases, windows)


def decode_layers(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, shape: tuple[int, int, int, int],
    stack: StackWeights, keys: list[torch.Tensor], values: list[torch.Tensor],
    slots: torch.Tensor, tables: torch.Tensor, lengths: torch.Tensor, block_size: int,
    final_norm: tuple[torch.Tensor, float] | None = None, keep: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """``[M, H]``: every layer of a step in one call, for tokens ``x [M, H]``, each a row of
    its sequence at its own visible length (a decode step's next tokens, or a prefill's tokens
    at lengths p + 1; ``cos``/``sin`` ``[M, head_dim]``). Per layer: `decode_pre`,
    the step's k/v rows written into the layer's cache ``keys[l]`` / ``values[l]`` ``[slots,
    H_kv, D]`` at ``slots [M]``, the paged decode attention (`lmforge.infer.paged_attention`:
    block ``tables [M, W]``, visible ``lengths [M]``, scale 1/√D), `decode_post`. ``shape``:
    (heads, kv_heads, head_dim, intermediate size). ``final_norm``: (weight, eps) of the
    model's last RMSNorm, applied to the output (the runner's head reads normed rows).
    ``keep`` (int64 row indices ``[K]``): the last layer writes every row's K/V, then runs its
    attention, o projection and MLP for these rows only, and the result is ``[K, H]`` — a
    prefill's other rows feed no logits (llama.cpp skips them too: its ``inp_out_ids``)."""
    heads, kv_heads, head_dim, inter = shape
    s = stack
    norm, eps = final_norm if final_norm is not None else (None, 0.0)
    return torch.ops.lmforge_ext.decode_layers(
        x, cos, sin, heads, kv_heads, head_dim, inter, s.norms, s.eps, s.weights, s.scales,
        s.biases, keys, values, slots, tables, lengths, block_size, 1.0 / math.sqrt(head_dim),
        s.windows, norm, float(eps), keep,
    )  # fmt: skip
