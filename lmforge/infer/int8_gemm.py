"""Int8 × int8 linear layers for CPU decoding: int8 weights, activations quantised to int8
on the fly (dynamic quantisation), products summed in int32 by fbgemm (AVX-512 VNNI
``vpdpbusd`` where the CPU has it).

Weight-only int8 (`lmforge.nn.quant.Int8Linear`) widens every weight code to a float and
multiplies it with a float activation. Quantising the activations too lets one instruction
multiply and sum 4 int8 pairs per 32-bit lane (llama.cpp's q8_0 quantises its activations
to 8 bits per block of 32). With per-output-channel weight scales ``s_w`` and an activation
scale ``s_x`` and offset ``z_x`` (Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", eqs. 1–4, weight offset 0):

    y_n = s_x s_w,n Σ_k (q_x,k − z_x) q_w,nk + b_n

`prepack_int8` packs the layer's own codes ``q_w`` and scales ``s_w`` (used exactly: the
only new error is the activations' rounding, at most ``s_x / 2`` per entry) for fbgemm's
dynamic linear (``torch.ops.quantized.linear_dynamic``, `int8_linear`), which quantises
``x`` to uint8 with **one** range for all its rows, multiplies and rescales in one call.
One range for the rows of different requests would let a large row coarsen the others
(16-row chunks of held-out text through the briefly trained 5m preset: perplexity +0.38 %
over weight-only int8), so `int8_linear_rows` divides each row by its absmax first and
multiplies the output back: every row spans ±1 and is quantised as finely as alone
(perplexity 5.1679 against 5.1694 weight-only and 5.1696 fp32; 16 concurrent requests ×
64 greedy tokens through the decode step: 11 of 16 sequences identical to weight-only
int8's, mean |Δ log-prob| 0.0097, where weight-only int8 against fp32 gives 11 of 16 and
0.0083; 30m random init 14 of 16, as against 13). fbgemm without VNNI
multiplies pairs into saturating int16 sums; there the activations use 7 bits
(``reduce_range``), as PyTorch's own dynamic quantisation does on fbgemm.

The packed weight is an opaque object, so a compiled function reaches it through an
integer handle: `int8_linear_op` (``lmforge::int8_linear``) reads it from the registry of
`lmforge.infer.packed_gemm` (`register_packed`, same handle space as
``lmforge::packed_linear``); the handle is a graph constant and the entry behind it can be
swapped without recompiling.

Where it pays (2-core AMD EPYC, AVX-512 VNNI, 1 thread, the 30m preset's int8 projections,
all 33 of one decode step with the weights cold as in decoding; busy shared machine):
16 rows 7.4 ms through fbgemm against 28.1 ms through the weight-only
``torch._weight_int8pack_mm`` (bf16 activations), 4 rows 4.7 vs 6.5 ms. One row it does
not: 2.7 ms, the same as the compiled step's weight-only row products in the same run
(31.6 MB of codes: ≈ 12 GB/s both, so with cold weights one row waits on memory, not on
the multiplies), and through the custom op inside a compiled graph 3.3 ms (≈ 20–35 µs of
Python dispatch per call; 5m preset: 0.60 ms row products, 0.70 fbgemm, 1.27 through the
op). ``torch._int_mm`` (oneDNN s8·s8 over the plain weight, activations quantised per row
in the graph) was slower still with cold weights (5.8 ms). Hot-cache microbenchmarks
flatter both: ``[2752, 512]``, one row, 35 µs fbgemm, 27 µs ``_int_mm``, 80 µs
``_weight_int8pack_mm``. Decode figures: `lmforge.infer.decode_step`.

`int8_enabled` is false off the CPU, where torch lacks fbgemm, and when the environment
sets ``LMFORGE_INT8_GEMM=0``.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from lmforge.infer.packed_gemm import registered

__all__ = [
    "int8_enabled",
    "int8_linear",
    "int8_linear_op",
    "int8_linear_rows",
    "int8_rows",
    "prepack_int8",
]


@functools.cache
def _fbgemm_available() -> bool:
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    return hasattr(torch.ops.quantized, "linear_dynamic")


@functools.cache
def _has_vnni() -> bool:
    """Whether the CPU has 8-bit dot products (AVX-512 VNNI or AVX-VNNI): fbgemm's int16
    pair sums cannot saturate then (unknown: assume not)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def int8_enabled(weight: torch.Tensor | None = None) -> bool:
    """Whether int8 × int8 products may run (for ``weight``'s device when given): on the CPU,
    torch with fbgemm, not turned off by ``LMFORGE_INT8_GEMM=0``."""
    if os.environ.get("LMFORGE_INT8_GEMM", "1") == "0":
        return False
    if weight is not None and weight.device.type != "cpu":
        return False
    return _fbgemm_available()


def prepack_int8(q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None):
    """fbgemm's packed form of the int8 codes ``q_w [out, in]`` with per-row scales ``s_w``
    (used exactly: zero offsets) and an optional fp32 bias, for `int8_linear`."""
    out = q_w.shape[0]
    with warnings.catch_warnings():  # quantized tensors are deprecated (still supported)
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(
            q_w.detach().contiguous(),
            s_w.detach().double(),
            torch.zeros(out, dtype=torch.long),
            0,
        )
        b = None if bias is None else bias.detach().float().contiguous()
        return torch.ops.quantized.linear_prepack(qw, b)


def int8_linear(x: torch.Tensor, packed) -> torch.Tensor:
    """``x [N, in] → [N, out]`` through fbgemm's dynamic int8 linear over `prepack_int8`'s
    ``packed`` weight (activations quantised with one scale and offset for all rows)."""
    y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), packed, not _has_vnni())
    return y.to(x.dtype)


_LIB = torch.library.Library("lmforge", "FRAGMENT")  # see `lmforge.infer.packed_gemm`'s
_LIB.define("int8_linear(Tensor x, int handle, int out_features) -> Tensor")
_LIB.impl("int8_linear", lambda x, handle, out_features: int8_linear(x, registered(handle)), "CPU")


@torch.library.register_fake("lmforge::int8_linear")
def _int8_linear_shape(x, handle, out_features):
    return x.new_empty(x.shape[0], out_features)


def int8_linear_op(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """`int8_linear` with the packed weight registered under ``handle``
    (`lmforge.infer.packed_gemm.register_packed`): ``[N, in] → [N, out]``, as the
    dispatcher op ``lmforge::int8_linear`` (a plain CPU kernel: no custom_op wrapping)."""
    return torch.ops.lmforge.int8_linear.default(x, handle, out_features)


def int8_linear_rows(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """`int8_linear_op` with every row of ``x`` first divided by its absmax ``r_i`` and the
    output row multiplied back: ``y_i = r_i · f(x_i / r_i)``. Every row then spans ±1, so
    the one activation range fbgemm chooses for all rows quantises each row as finely as
    its own range would (rows of different requests stay apart). Pointwise work around
    the op: ``torch.compile`` fuses it into the neighbouring loops. The packed weight must
    not hold the bias (it would be scaled too): add it afterwards."""
    r = x.float().abs().amax(-1, keepdim=True).clamp_min(1e-30)
    return (int8_linear_op(x / r, handle, out_features) * r).to(x.dtype)


def int8_rows(x: torch.Tensor, packed) -> torch.Tensor:
    """`int8_linear_rows` for eager callers, with the packed weight itself (no handle): every
    row scaled to ±1 by its absmax, fbgemm's dynamic int8 linear, the rows scaled back."""
    r = x.float().abs().amax(-1, keepdim=True).clamp_min(1e-30)
    return (int8_linear(x / r, packed) * r).to(x.dtype)
