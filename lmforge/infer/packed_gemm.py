"""Linear layers with the weight pre-packed once for oneDNN, for CPU GEMMs of a few rows.

``x Wᵀ`` through MKL's ``sgemm`` re-packs the whole weight into its blocked layout on every
call. For one row MKL runs a GEMV and reads the weight as stored, but from two rows on it
packs: for weights that do not fit in the caches that doubles or triples the memory traffic
of the call. On the 30m preset's layer shapes (one forward's q/k/v, o, gate/up and down
projections, 1 thread, fp32, 2-core AMD EPYC; `bench/engine_overhead.py --gemm-sizes 30m`,
BENCHMARKS.md) ``x @ Wᵀ`` took 1.95, 3.82, 8.19 and 9.99 ms for 1, 2, 4 and 8 rows, the
pre-packed oneDNN call 2.09, 2.17, 2.52 and 4.71 ms: a verification forward of a few draft
tokens, or a decode step of a few requests, now costs about as much as one row, as it
should when the weights' bytes dominate.

`pack_weight` reorders ``W [out, in]`` into oneDNN's blocked layout (``torch.ops.mkldnn.
_reorder_linear_weight``, the op ``torch.compile``'s CPU freezing pass uses) and
`packed_linear` runs ``x Wᵀ + b`` with it (``torch.ops.mkldnn._linear_pointwise``). Results
equal ``F.linear`` up to fp32 rounding (a different summation order). Only fp32 CPU tensors
on a torch built with oneDNN are packed; `packing_enabled` is false elsewhere and when the
environment sets ``LMFORGE_PACKED_GEMM=0``.

`packed_linear_op` is the same product as a registered custom op (``lmforge::packed_linear``)
that ``torch.compile`` can put in a graph: a oneDNN-layout tensor cannot be a compiled
function's input, so the op takes an integer **handle** into a registry (`register_packed`)
instead. The handle is a constant of the compiled graph; the registry entry behind it can be
swapped (weights rebuilt) without recompiling. The registry holds any pre-packed weight
object (`lmforge.infer.int8_gemm` registers fbgemm's int8 ones in the same handle space).
"""

from __future__ import annotations

import os

import torch


def packing_enabled(weight: torch.Tensor) -> bool:
    """Whether ``weight`` can (and may) be packed: fp32 on the CPU, oneDNN present, not
    turned off by ``LMFORGE_PACKED_GEMM=0``."""
    if os.environ.get("LMFORGE_PACKED_GEMM", "1") == "0":
        return False
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2:
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    return hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    )


_REGISTRY: dict[int, object] = {}
_NEXT_HANDLE = [0]


def new_handles(count: int) -> int:
    """The first of ``count`` fresh handles (consecutive integers) for `register_packed`."""
    first = _NEXT_HANDLE[0]
    _NEXT_HANDLE[0] += count
    return first


def register_packed(handle: int, packed: object | None) -> None:
    """Put ``packed`` (from `pack_weight`, or any other pre-packed weight such as
    `lmforge.infer.int8_gemm.prepack_int8`'s) behind ``handle``; None frees the entry."""
    if packed is None:
        _REGISTRY.pop(handle, None)
    else:
        _REGISTRY[handle] = packed


def registered(handle: int) -> object:
    """The pre-packed weight behind ``handle`` (KeyError when none is)."""
    return _REGISTRY[handle]


# lmforge's handle-based ops, defined on the dispatcher with plain Python CPU kernels: a
# ``torch.library.custom_op`` adds ≈ 11 µs of Python wrapping per call (27 against 17 µs
# for a 2-row product), ≈ 0.36 ms per 30m decode step of 33 products. Inference only (no
# autograd kernel).
_LIB = torch.library.Library("lmforge", "FRAGMENT")
_LIB.define("packed_linear(Tensor x, Tensor? bias, int handle, int out_features) -> Tensor")


def _packed_linear_kernel(x, bias, handle, out_features):
    return packed_linear(x, registered(handle), bias)


_LIB.impl("packed_linear", _packed_linear_kernel, "CPU")


@torch.library.register_fake("lmforge::packed_linear")
def _packed_linear_shape(x, bias, handle, out_features):
    return x.new_empty(x.shape[0], out_features)


def packed_linear_op(
    x: torch.Tensor, bias: torch.Tensor | None, handle: int, out_features: int
) -> torch.Tensor:
    """`packed_linear` with the weight registered under ``handle`` (``[N, in] → [N, out]``),
    as the dispatcher op ``lmforge::packed_linear`` that ``torch.compile`` puts in a graph."""
    return torch.ops.lmforge.packed_linear.default(x, bias, handle, out_features)


def pack_weight(weight: torch.Tensor, rows_hint: int = 8) -> torch.Tensor:
    """``weight [out, in]`` (fp32, CPU) in oneDNN's blocked layout for inputs of about
    ``rows_hint`` rows (any row count works)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows_hint)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [N, in] → x Wᵀ + b [N, out]`` with ``packed`` from `pack_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
