"""Weight-only quantised linear layers for CPU decoding: int8 with one scale per output
channel, int4 with a scale and an offset per group of input columns.

    layer = Int8Linear.from_linear(linear)                  # W ≈ s ⊙ q,      q ∈ [-127, 127]
    layer = Int4Linear.from_linear(linear, group_size=64)   # W ≈ s_g·q + z_g, q ∈ [0, 15]

Only the weights are quantised; activations stay floating point ("weight-only", as in
LLM.int8's absmax per-row quantisation, Dettmers et al. 2022, Eq. 1, and the group-wise
asymmetric min/max scheme of GPTQ/AWQ's round-to-nearest baseline):

* **int8, per channel**: ``s_n = max_k |W_nk| / 127``, ``q_nk = round(W_nk / s_n)``;
  the dequantised weight differs from ``W`` by at most ``s_n / 2`` per entry.
* **int4, group-wise**: for every row ``n`` and group ``g`` of ``group_size`` consecutive
  input columns, ``z = min W``, ``s = (max W − min W) / 15``, ``q = round((W − z) / s)``;
  the error is at most ``s / 2`` per entry. Two 4-bit values share one byte (the low
  nibble holds the even column), so a weight costs half a byte plus its group's scale.

The stored tensors (``weight`` int8/uint8, ``weight_scale``, ``weight_zero``, fp32 scales)
are the portable form saved in checkpoints; the kernel forms are derived from them on first
use and rebuilt when the stored tensors change. Decoding (few rows) runs PyTorch's CPU
kernels ``torch._weight_int8pack_mm`` and ``torch._weight_int4pack_mm_for_cpu`` with
bfloat16 activations — the only activation dtype for which those kernels are vectorised
(measured on a 2-core AVX2 EPYC: the int8 kernel is ≈13× slower with fp32 activations than
with bf16 ones); the result is returned in the input dtype. Prefill (many rows) and shapes
the kernels refuse (int4 needs a multiple of 16 output channels) dequantise into a
floating-point matmul instead. One int8 row (batch-1 decoding) goes through lmforge's own C++
op instead where it builds (`lmforge.nn.int8_gemv`, fp32 activations).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.nn.int8_gemv import int8_gemv, int8_gemv_available

INT4_GROUP_SIZES = (32, 64, 128, 256)  # the group sizes torch's int4 CPU kernel accepts
KERNEL_MAX_ROWS = 16  # above this many rows, dequantise once and run one fp32 GEMM


def quantize_int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 [N, K], scale fp32 [N])`` with ``weight ≈ scale[:, None] * q`` (absmax per
    output row; an all-zero row gets scale 1)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 ``[N, K]`` weight of `quantize_int8_per_channel`'s output."""
    return q.float() * scale.float()[:, None]


def _grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N, G, group_size]`` view of ``weight`` with the last group padded by repeating the
    row's last column (padding never widens a group's min/max range)."""
    n, k = weight.shape
    pad = -k % group_size
    if pad:
        weight = torch.cat([weight, weight[:, -1:].expand(n, pad)], dim=1)
    return weight.reshape(n, -1, group_size)


def quantize_int4_groupwise(
    weight: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes uint8 [N, K] in 0..15, scale fp32 [N, G], zero fp32 [N, G])`` with
    ``weight[n, k] ≈ scale[n, g] * codes[n, k] + zero[n, g]``, ``g = k // group_size``
    (asymmetric min/max per group; ``G = ceil(K / group_size)``)."""
    n, k = weight.shape
    groups = _grouped(weight.detach().float(), group_size)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = (hi - lo) / 15.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((groups - lo[..., None]) / scale[..., None]).clamp_(0, 15)
    return codes.reshape(n, -1)[:, :k].to(torch.uint8), scale, lo


def dequantize_int4(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int
) -> torch.Tensor:
    """fp32 ``[N, K]`` weight from int4 codes ``[N, K]`` and per-group scale / offset."""
    n, k = codes.shape
    groups = _grouped(codes.float(), group_size)
    return (groups * scale[..., None] + zero[..., None]).reshape(n, -1)[:, :k]


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: ``[N, K]`` (0..15) → uint8 ``[N, ceil(K / 2)]``, the even
    column in the low nibble (an odd K is padded with a zero code)."""
    if codes.shape[1] % 2:
        codes = F.pad(codes, (0, 1))
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of `pack_int4`: uint8 ``[N, ceil(K / 2)]`` → codes uint8 ``[N, K]``."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)[:, :in_features]


def _aligned(t: torch.Tensor, alignment: int = 64) -> torch.Tensor:
    """``t`` itself, or a copy in fresh (``alignment``-byte aligned) memory when its data
    starts elsewhere: tensors read from a memory-mapped safetensors file can start at any
    byte, and ``torch._weight_int8pack_mm`` crashes (segfault) on such int8 weights."""
    return t if t.data_ptr() % alignment == 0 else t.clone()


def _version(t: torch.Tensor) -> int:
    return -1 if t.is_inference() else t._version


class _QuantizedLinear(nn.Module):
    """Shared plumbing: shapes, the optional bias, and the kernel-form cache."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._kernel: tuple | None = None
        self._kernel_key: tuple | None = None

    def _stored(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _build_kernel_form(self) -> tuple:
        raise NotImplementedError

    def kernel_form(self) -> tuple:
        """The kernel's tensors, rebuilt when a stored tensor was replaced or modified
        (inference tensors, e.g. a layer built under ``torch.inference_mode``, have no
        version counter: only their identity is checked)."""
        key = tuple((t.data_ptr(), _version(t), t.device) for t in self._stored())
        if key != self._kernel_key:
            with torch.no_grad():
                self._kernel, self._kernel_key = self._build_kernel_form(), key
        return self._kernel

    def dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def rows_kernel(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``f(x)`` = ``self(x)`` for a CPU ``x`` of shape ``[rows, in]`` with
        ``1 ≤ rows ≤ KERNEL_MAX_ROWS``, bound to the current kernel form (no per-call
        version check, reshapes or dispatch: the caller must ask again after the stored
        tensors change); None where decode does not use a kernel (not on CPU, or int4 with
        out_features not a multiple of 16)."""
        raise NotImplementedError

    def to_linear(self) -> nn.Linear:
        """A plain `nn.Linear` holding the dequantised weight (fp32)."""
        with torch.device("meta"):
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.weight = nn.Parameter(self.dequantized_weight())
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().float().clone())
        return linear

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(_QuantizedLinear):
    """``y = x (s ⊙ q)ᵀ + b``: int8 weight ``[out, in]`` with an fp32 scale per output
    channel (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantise ``linear``'s weight (its bias is kept as it is)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.weight, layer.weight_scale = quantize_int8_per_channel(linear.weight)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone())
        return layer.to(linear.weight.device)

    def _stored(self) -> tuple[torch.Tensor, ...]:
        return self.weight, self.weight_scale

    def _build_kernel_form(self) -> tuple:
        return (_aligned(self.weight.contiguous()), self.weight_scale.to(torch.bfloat16))

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_int8(self.weight, self.weight_scale)

    @property
    def uses_kernel(self) -> bool:
        """Whether several rows run torch's int8 kernel: it needs a multiple of 16 input
        columns (with others, 2026-12-04, torch 2.13 CPU: wrong outputs of up to 1e24, or a
        segfault); otherwise they dequantise into one fp32 matmul."""
        return self.in_features % 16 == 0

    def _products(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x [rows, K] ↦ x Ŵᵀ`` (no bias) for 1 … KERNEL_MAX_ROWS rows on the CPU, bound
        to the current weights: one row through lmforge's op where it builds
        (`lmforge.nn.int8_gemv`: fp32 activations, each int8 × fp32 product summed in fp32;
        30m preset, eager engine, one thread: 207 → 269 tok/s), otherwise torch's kernel
        with bf16 activations (`uses_kernel`) or the dequantised matmul. The engine's fused
        runner binds the same function (`rows_kernel`), so its logits equal ``forward``'s
        bit for bit (its one-token layer ops, `lmforge.nn.decode_layer`, call the same
        one-row kernel, with their own norm and RoPE)."""
        codes, scale_fp32 = self.weight, self.weight_scale.float()
        one_row, kernel = int8_gemv_available(), self.uses_kernel
        if kernel:
            weight, scale = self.kernel_form()
        dense: list[torch.Tensor] = []  # the dequantised weight, made on first need

        def products(x: torch.Tensor) -> torch.Tensor:
            if one_row and x.shape[0] == 1:
                return int8_gemv(x.float(), codes, scale_fp32).to(x.dtype)
            if kernel:
                return torch._weight_int8pack_mm(x.to(torch.bfloat16), weight, scale).to(x.dtype)
            if not dense:
                dense.append(self.dequantized_weight())
            return x @ dense[0].to(x.dtype).t()

        return products

    def rows_kernel(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self.weight.device.type != "cpu":
            return None
        products, bias = self._products(), self.bias

        def int8_rows(x: torch.Tensor) -> torch.Tensor:
            y = products(x)
            return y if bias is None else y + bias.to(y.dtype)

        return int8_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = math.prod(x.shape[:-1])
        if x.device.type != "cpu" or rows > KERNEL_MAX_ROWS or rows == 0:
            return self._dense(x)
        y = self._products()(x.reshape(rows, -1))
        return self._add_bias(y.reshape(*x.shape[:-1], self.out_features))


class Int4Linear(_QuantizedLinear):
    """``y = x Ŵᵀ + b`` with ``Ŵ[n, k] = s[n, g] · q[n, k] + z[n, g]``, 4-bit codes packed
    two per byte (``weight`` uint8 ``[out, ceil(in / 2)]``), scale and offset per group of
    ``group_size`` input columns (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 group_size: int = 64) -> None:  # fmt: skip
        super().__init__(in_features, out_features, bias)
        if group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
        self.group_size = group_size
        groups = math.ceil(in_features / group_size)
        packed = torch.zeros(out_features, math.ceil(in_features / 2), dtype=torch.uint8)
        self.register_buffer("weight", packed)
        self.register_buffer("weight_scale", torch.ones(out_features, groups))
        self.register_buffer("weight_zero", torch.zeros(out_features, groups))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 64) -> Int4Linear:
        """Quantise ``linear``'s weight group-wise (its bias is kept as it is)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        codes, layer.weight_scale, layer.weight_zero = quantize_int4_groupwise(
            linear.weight, group_size
        )
        layer.weight = pack_int4(codes)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone())
        return layer.to(linear.weight.device)

    def _stored(self) -> tuple[torch.Tensor, ...]:
        return self.weight, self.weight_scale, self.weight_zero

    @property
    def uses_kernel(self) -> bool:
        """Whether decode runs torch's int4 kernel (it needs a multiple of 16 output rows)."""
        return self.out_features % 16 == 0

    def _build_kernel_form(self) -> tuple:
        """torch's layout: codes padded to whole groups (zero code, zero activation), packed
        by ``_convert_weight_to_int4pack_for_cpu``; ``[G, N, 2]`` (scale, offset) in bf16 for
        its ``(q − 8)·s + z'`` form, so ``z' = z + 8 s``."""
        codes = unpack_int4(self.weight, self.in_features).to(torch.int32)
        padded = self.weight_scale.shape[1] * self.group_size
        codes = F.pad(codes, (0, padded - self.in_features))
        packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
        offset = self.weight_zero + 8 * self.weight_scale
        scales_zeros = torch.stack([self.weight_scale, offset], dim=-1).transpose(0, 1)
        return packed, scales_zeros.contiguous().to(torch.bfloat16), padded

    def dequantized_weight(self) -> torch.Tensor:
        codes = unpack_int4(self.weight, self.in_features)
        return dequantize_int4(codes, self.weight_scale, self.weight_zero, self.group_size)

    def rows_kernel(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self.weight.device.type != "cpu" or not self.uses_kernel:
            return None
        packed, scales_zeros, padded = self.kernel_form()
        bias, group_size, pad = self.bias, self.group_size, padded - self.in_features

        def int4_rows(x: torch.Tensor) -> torch.Tensor:
            x2 = x.to(torch.bfloat16)
            if pad:
                x2 = F.pad(x2, (0, pad))
            y = torch._weight_int4pack_mm_for_cpu(x2, packed, group_size, scales_zeros)
            y = y.to(x.dtype)
            return y if bias is None else y + bias.to(y.dtype)

        return int4_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = math.prod(x.shape[:-1])
        if x.device.type != "cpu" or rows > KERNEL_MAX_ROWS or rows == 0 or not self.uses_kernel:
            return self._dense(x)
        packed, scales_zeros, padded = self.kernel_form()
        x2 = x.reshape(rows, -1).to(torch.bfloat16)
        if padded != self.in_features:
            x2 = F.pad(x2, (0, padded - self.in_features))
        y = torch._weight_int4pack_mm_for_cpu(x2, packed, self.group_size, scales_zeros)
        return self._add_bias(y.to(x.dtype).reshape(*x.shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


QuantizedLinear = Int8Linear | Int4Linear


def concat_quantized(layers: list[nn.Module]) -> Int8Linear | Int4Linear | None:
    """One quantised layer computing ``cat([layer(x) for layer in layers], -1)`` exactly
    (rows stacked with their scales: every output channel keeps its own codes, scale and
    offset), or None when the layers cannot be stacked bit-exactly: mixed types, group
    sizes, input widths or bias presence, or int4 parts whose kernel use (a multiple of 16
    output rows) differs from the stacked layer's. Used to fuse q/k/v and gate/up."""
    first = layers[0]
    kind = type(first)
    if kind not in (Int8Linear, Int4Linear) or any(type(m) is not kind for m in layers):
        return None
    if any(m.in_features != first.in_features or (m.bias is None) != (first.bias is None)
           for m in layers):  # fmt: skip
        return None
    out = sum(m.out_features for m in layers)
    cat = lambda name: torch.cat([getattr(m, name).detach() for m in layers])  # noqa: E731
    if kind is Int8Linear:
        fused = Int8Linear(first.in_features, out, bias=first.bias is not None)
    else:
        if any(m.group_size != first.group_size for m in layers):
            return None
        fused = Int4Linear(first.in_features, out, first.bias is not None, first.group_size)
        if any(m.uses_kernel != fused.uses_kernel for m in layers):
            return None
        fused.weight_zero = cat("weight_zero")
    fused.weight, fused.weight_scale = cat("weight"), cat("weight_scale")
    if first.bias is not None:
        fused.bias = nn.Parameter(cat("bias"), requires_grad=False)
    return fused.to(first.weight.device)


__all__ = [
    "INT4_GROUP_SIZES",
    "KERNEL_MAX_ROWS",
    "Int4Linear",
    "Int8Linear",
    "QuantizedLinear",
    "concat_quantized",
    "dequantize_int4",
    "dequantize_int8",
    "pack_int4",
    "quantize_int4_groupwise",
    "quantize_int8_per_channel",
    "unpack_int4",
]
