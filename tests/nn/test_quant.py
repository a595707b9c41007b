"""Weight-only int8 / int4 linear layers: error within the bound the quantisation implies,
int4 packing, and the kernel (decode) and dequantised (prefill) paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.nn.quant import (
    KERNEL_MAX_ROWS,
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    pack_int4,
    quantize_int4_groupwise,
    quantize_int8_per_channel,
    unpack_int4,
)

BF16_UNIT = 2.0**-8  # bf16 rounding moves a value by at most this fraction of it


def _linear(n_in: int, n_out: int, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05)
    return layer


def _bound(
    x: torch.Tensor, w_hat: torch.Tensor, w_err: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """|x Wᵀ − ŷ| ≤ |x| |W − Ŵ|ᵀ (weight rounding) + 2⁻⁸ |x| |Ŵ|ᵀ (bf16 activations)
    + 2⁻⁸ |y| (bf16 output) + fp32 slack."""
    ax = x.abs()
    return ax @ w_err.t() + BF16_UNIT * ax @ w_hat.abs().t() + BF16_UNIT * y.abs() + 1e-5


def test_int8_per_channel_closed_form():
    w = torch.tensor([[0.5, -1.27, 0.0], [0.0, 0.0, 0.0]])
    q, s = quantize_int8_per_channel(w)
    assert torch.allclose(s, torch.tensor([1.27 / 127, 1.0]))
    assert q.tolist() == [[50, -127, 0], [0, 0, 0]] and q.dtype == torch.int8


@pytest.mark.parametrize("rows", [1, 5, KERNEL_MAX_ROWS + 3])
def test_int8_linear_within_quantisation_bound(rows):
    linear = _linear(96, 40, bias=True)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(rows, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact, y = linear(x), layer(x)
    q, s = quantize_int8_per_channel(linear.weight)
    w_hat = q.float() * s[:, None]
    w_err = (s / 2)[:, None].expand_as(w_hat)  # rounding to the nearest step of s
    assert ((w_hat - linear.weight).abs() <= w_err + 1e-7).all()
    bound = _bound(x, w_hat, w_err, exact - linear.bias)
    assert ((y - exact).abs() <= bound).all()
    # the error is mostly the weight rounding's: far from zero, far below the scale of y
    assert 0 < (y - exact).abs().max() < 0.05 * exact.abs().max()
    if rows > KERNEL_MAX_ROWS:  # prefill path: exactly the dequantised fp32 matmul
        torch.testing.assert_close(y, x @ w_hat.t() + linear.bias, rtol=1e-5, atol=1e-5)


def test_int4_groupwise_codes_and_error_closed_form():
    w = torch.randn(6, 80, generator=torch.Generator().manual_seed(2))
    codes, scale, zero = quantize_int4_groupwise(w, group_size=32)  # 80 = 2 full groups + 16
    assert codes.shape == (6, 80) and scale.shape == zero.shape == (6, 3)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 15
    for g, cols in enumerate((slice(0, 32), slice(32, 64), slice(64, 80))):
        part = w[:, cols]
        torch.testing.assert_close(zero[:, g], part.amin(1))
        torch.testing.assert_close(scale[:, g], (part.amax(1) - part.amin(1)) / 15)
    w_hat = dequantize_int4(codes, scale, zero, 32)
    step = scale.repeat_interleave(32, dim=1)[:, :80]
    assert ((w_hat - w).abs() <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("k", [8, 9, 80])
def test_int4_packing_round_trip_and_nibble_order(k):
    codes = torch.randint(
        0, 16, (5, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(k)
    )
    packed = pack_int4(codes)
    assert packed.shape == (5, (k + 1) // 2) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, k), codes)
    # the even column in the low nibble, the odd one in the high nibble
    assert int(packed[0, 0]) == int(codes[0, 0]) + 16 * int(codes[0, 1])


@pytest.mark.parametrize(
    ("n_out", "n_in", "rows"),
    [(48, 64, 1), (48, 80, 3), (20, 64, 2), (48, 64, KERNEL_MAX_ROWS + 1)],
    ids=["kernel", "kernel-partial-group", "fallback-n-not-16", "prefill"],
)
def test_int4_linear_within_quantisation_bound(n_out, n_in, rows):
    linear = _linear(n_in, n_out, bias=True, seed=3)
    layer = Int4Linear.from_linear(linear, group_size=32)
    assert layer.uses_kernel == (n_out % 16 == 0)
    x = torch.randn(rows, n_in, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        exact, y = linear(x), layer(x)
    codes, scale, zero = quantize_int4_groupwise(linear.weight, 32)
    w_hat = dequantize_int4(codes, scale, zero, 32)
    w_err = scale.repeat_interleave(32, dim=1)[:, :n_in] / 2
    bound = _bound(x, w_hat, w_err, exact - linear.bias)
    assert ((y - exact).abs() <= bound).all()
    assert (y - exact).abs().max() > 0
    # against the dequantised weight, only the bf16 rounding of the kernel path remains
    ref = x @ w_hat.t() + linear.bias
    slack = BF16_UNIT * (x.abs() @ w_hat.abs().t() + ref.abs()) + 1e-5
    assert ((y - ref).abs() <= slack).all()


def test_kernel_form_follows_in_place_updates_and_to_linear():
    layer = Int8Linear.from_linear(_linear(32, 16))
    x = torch.randn(1, 32)
    with torch.no_grad():
        before = layer(x)
        layer.weight_scale.mul_(2)  # the cached bf16 scales must be rebuilt
        torch.testing.assert_close(layer(x), 2 * before, rtol=2e-2, atol=1e-4)
    dense = layer.to_linear()
    assert type(dense) is nn.Linear and dense.weight.dtype == torch.float32
    torch.testing.assert_close(dense.weight, layer.dequantized_weight())


def test_int4_refuses_group_sizes_the_kernel_lacks():
    with pytest.raises(ValueError, match="group_size"):
        Int4Linear(64, 16, group_size=48)


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("rows", [1, KERNEL_MAX_ROWS + 3])
def test_concat_quantized_equals_the_parts_bit_exactly(kind, rows):
    from lmforge.nn.quant import concat_quantized

    make = (lambda lin: Int8Linear.from_linear(lin)) if kind == "int8" else (
        lambda lin: Int4Linear.from_linear(lin, group_size=32))  # fmt: skip
    parts = [make(_linear(96, n, bias=True, seed=n)) for n in (64, 32, 32)]
    fused = concat_quantized(parts)
    assert type(fused) is type(parts[0]) and fused.out_features == 128
    x = torch.randn(rows, 96)
    with torch.no_grad():
        assert torch.equal(fused(x), torch.cat([p(x) for p in parts], dim=-1))


def test_concat_quantized_refuses_parts_it_cannot_stack_exactly():
    from lmforge.nn.quant import concat_quantized

    i8, i4 = Int8Linear.from_linear(_linear(64, 32)), Int4Linear.from_linear(_linear(64, 32), 32)
    assert concat_quantized([i8, i4]) is None  # mixed schemes
    assert concat_quantized([i4, Int4Linear.from_linear(_linear(64, 32), 64)]) is None
    assert concat_quantized([i8, Int8Linear.from_linear(_linear(64, 32, bias=True))]) is None
    assert concat_quantized([i8, Int8Linear.from_linear(_linear(32, 32))]) is None  # widths
    # 8 + 8 rows: the parts dequantise (no kernel), a 16-row stack would use the kernel
    eights = [Int4Linear.from_linear(_linear(64, 8, seed=s), 32) for s in (0, 1)]
    assert concat_quantized(eights) is None
    assert concat_quantized([nn.Linear(4, 4), nn.Linear(4, 4)]) is None


def test_one_int8_row_takes_lmforge_op_with_fp32_activations(monkeypatch):
    """Batch-1 rows go through `lmforge.nn.int8_gemv` where it builds: the dequantised fp32
    product up to summation order (no bf16 rounding), the same numbers from the fused
    runner's kernel; with the op off (``LMFORGE_INT8_GEMV=0``) torch's bf16 kernel again."""
    from lmforge.nn.int8_gemv import int8_gemv_available, int8_gemv_unavailable_reason

    if not int8_gemv_available():
        pytest.skip(f"int8_gemv unavailable: {int8_gemv_unavailable_reason()}")
    linear = _linear(96, 40, bias=True)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(1, 96, generator=torch.Generator().manual_seed(3))
    q, s = quantize_int8_per_channel(linear.weight)
    expected = x @ (q.float() * s[:, None]).t() + linear.bias
    with torch.no_grad():
        y = layer(x)
        torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(layer.rows_kernel()(x), y)
        assert torch.equal(layer(x[0]), y[0])  # an unbatched row too
        monkeypatch.setenv("LMFORGE_INT8_GEMV", "0")
        bf16 = layer(x)
        assert torch.equal(layer.rows_kernel()(x), bf16)
    assert not torch.equal(bf16, y)  # bf16 activations: another rounding
    assert (bf16 - expected).abs().max() > (y - expected).abs().max()


@pytest.mark.parametrize("n_in", [40, 88])
def test_int8_rows_without_a_multiple_of_16_columns_stay_correct(n_in):
    """torch's int8 kernel returns garbage (or crashes) unless the input width is a multiple
    of 16: such layers dequantise for several rows, the one-row op takes any width."""
    linear = _linear(n_in, 24, bias=True, seed=0)
    layer = Int8Linear.from_linear(linear)
    assert not layer.uses_kernel and Int8Linear.from_linear(_linear(96, 24)).uses_kernel
    w_hat = layer.dequantized_weight()
    for rows in (1, 3, KERNEL_MAX_ROWS):
        x = torch.randn(rows, n_in, generator=torch.Generator().manual_seed(rows))
        with torch.no_grad():
            y = layer(x)
            torch.testing.assert_close(y, x @ w_hat.t() + linear.bias, rtol=1e-5, atol=1e-5)
            assert torch.equal(layer.rows_kernel()(x), y)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_rows_kernel_equals_forward_bit_exactly(kind):
    lin = _linear(80, 48, bias=True)  # int4: 80 columns pad to 3 groups of 32
    layer = Int8Linear.from_linear(lin) if kind == "int8" else Int4Linear.from_linear(lin, 32)
    x = torch.randn(KERNEL_MAX_ROWS, 80)
    with torch.no_grad():
        for rows in (1, 5, KERNEL_MAX_ROWS):
            assert torch.equal(layer.rows_kernel()(x[:rows]), layer(x[:rows]))
    assert Int4Linear.from_linear(_linear(80, 8), 32).rows_kernel() is None  # no kernel


def test_int8_kernel_takes_weights_that_start_off_alignment():
    """A weight read from a memory-mapped safetensors file can start at any byte; the int8
    kernel crashed on those (segfault), so the kernel form moves them to aligned memory."""
    from lmforge.nn.quant import Int8Linear

    torch.manual_seed(0)
    aligned = Int8Linear.from_linear(nn.Linear(64, 64, bias=False))
    shifted = Int8Linear(64, 64)
    buffer = torch.zeros(64 * 64 + 8, dtype=torch.int8)
    weight = buffer[8:].view(64, 64)
    assert weight.data_ptr() % 64 != 0
    weight.copy_(aligned.weight)
    shifted.weight, shifted.weight_scale = weight, aligned.weight_scale.clone()
    x = torch.randn(4, 64)
    assert torch.equal(shifted(x), aligned(x))
    assert torch.equal(shifted.rows_kernel()(x), aligned(x))
