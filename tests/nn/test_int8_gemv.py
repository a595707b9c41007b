"""lmforge's one-row int8 op (`lmforge.nn.int8_gemv`): equal to the fp32 row products
``(q.float() * x).sum(-1) * s`` up to summation order on shapes that exercise the kernel's
tails (K not a multiple of 16 or 128, odd N), on 1 and 2 threads, through the AVX-512 and the
portable loops; the reasons it is unavailable; its fake implementation (torch.compile)."""

import pytest
import torch

from lmforge.nn import cpp_ops
from lmforge.nn import int8_gemv as gemv

pytestmark = pytest.mark.skipif(
    not gemv.int8_gemv_available(),
    reason=f"int8_gemv unavailable: {gemv.int8_gemv_unavailable_reason()}",
)

SHAPES = [(1, 1), (3, 7), (17, 64), (33, 100), (64, 128), (5, 300), (31, 1376), (512, 512)]


def reference(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return ((q.double() * x.double().reshape(1, -1)).sum(-1) * s.double()).float()


def codes(n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    return q, torch.rand(n, generator=g) * 0.02 + 1e-3


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("portable", [False, True], ids=["best", "portable"])
def test_equals_the_row_products(threads, portable, torch_threads):
    g = torch.Generator().manual_seed(0)
    torch_threads(threads)
    for n, k in SHAPES:
        q, s = codes(n, k, g)
        x = torch.randn(1, k, generator=g)
        y = gemv.int8_gemv_parts(x, [q], [s], portable=portable)
        assert y.shape == (1, n) and y.dtype == torch.float32
        torch.testing.assert_close(y[0], reference(x, q, s), rtol=1e-5, atol=1e-5)


def test_parts_are_concatenated_and_x_may_be_1d():
    g = torch.Generator().manual_seed(1)
    parts = [codes(n, 200, g) for n in (7, 1, 12)]
    x = torch.randn(200, generator=g)
    y = gemv.int8_gemv_parts(x, [q for q, _ in parts], [s for _, s in parts])
    ref = torch.cat([reference(x, q, s) for q, s in parts])
    assert y.shape == (20,)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    q, s = parts[0]
    torch.testing.assert_close(gemv.int8_gemv(x[None], q, s)[0], reference(x, q, s))
    noncontiguous = torch.randint(-127, 128, (200, 9), dtype=torch.int8, generator=g).t()
    torch.testing.assert_close(
        gemv.int8_gemv(x[None], noncontiguous, s[:1].expand(9).contiguous())[0],
        reference(x, noncontiguous, s[:1].expand(9)),
    )


def test_rejects_what_it_does_not_compute():
    q, s = codes(4, 8, torch.Generator().manual_seed(2))
    with pytest.raises(RuntimeError, match="float32"):
        gemv.int8_gemv(torch.randn(1, 8, dtype=torch.float64), q, s)
    with pytest.raises(RuntimeError, match="int8"):
        gemv.int8_gemv(torch.randn(1, 9), q, s)
    with pytest.raises(RuntimeError, match=r"\[1, K\]"):
        gemv.int8_gemv(torch.randn(2, 8), q, s)


def test_isa_names_the_kernel():
    assert gemv.int8_gemv_isa() in ("avx512", "avx2", "portable")


def test_unavailable_reasons(monkeypatch):
    monkeypatch.setenv("LMFORGE_INT8_GEMV", "0")
    assert not gemv.int8_gemv_available()
    assert "LMFORGE_INT8_GEMV=0" in gemv.int8_gemv_unavailable_reason()
    monkeypatch.delenv("LMFORGE_INT8_GEMV")
    assert gemv.int8_gemv_available()
    monkeypatch.setattr(cpp_ops.platform, "machine", lambda: "aarch64")
    assert "x86" in cpp_ops._load()
    monkeypatch.undo()
    monkeypatch.setattr(cpp_ops, "KERNEL_SOURCES", ("missing.cpp",))
    assert "missing" in cpp_ops._load()


def test_fake_implementation():
    g = torch.Generator().manual_seed(3)
    parts = [codes(n, 40, g) for n in (5, 3)]
    args = (torch.randn(1, 40, generator=g), [q for q, _ in parts], [s for _, s in parts], False)
    torch.library.opcheck(
        torch.ops.lmforge_ext.int8_gemv.default, args, test_utils=("test_schema", "test_faketensor")
    )


needs_q8 = pytest.mark.skipif(
    not gemv.int8_gemv_q8_supported(), reason="int8 × int8 one-row op needs AVX-512 VNNI or AVX2"
)


@needs_q8
@pytest.mark.parametrize("threads", [1, 2])
def test_q8_within_the_activation_rounding_bound(threads, torch_threads):
    """int8 × int8: the only error is rounding x to s_x · x_q (|x − s_x x_q| ≤ s_x / 2), so
    |y_n − s_n Σ_k q_nk x_k| ≤ s_n (s_x / 2) Σ_k |q_nk| (+ fp32 rounding)."""
    g = torch.Generator().manual_seed(5)
    parts = [codes(n, k, g) for n, k in ((37, 300), (5, 300))]  # K not a multiple of 64
    x = torch.randn(1, 300, generator=g)
    torch_threads(threads)
    y = gemv.int8_gemv_q8_parts(x, [q for q, _ in parts], [s for _, s in parts])
    q = torch.cat([q for q, _ in parts])
    s = torch.cat([s for _, s in parts])
    exact = (q.double() * x.double()).sum(-1) * s.double()
    bound = s.double() * (x.abs().max().double() / 127 / 2) * q.double().abs().sum(-1)
    err = (y.double() - exact).abs()[0]
    assert (err <= bound * 1.0001 + 1e-6).all()
    assert err.max() > 0  # it does quantise: not the fp32 product
    xq = torch.round(x / (x.abs().max() / 127))  # the same quantisation, computed here
    expected = (q.double() * xq.double()).sum(-1) * s.double() * (x.abs().max().double() / 127)
    torch.testing.assert_close(y.double()[0], expected, rtol=1e-5, atol=1e-6)


@needs_q8
def test_q8_zero_row_and_fake():
    g = torch.Generator().manual_seed(6)
    q, s = codes(8, 70, g)
    assert gemv.int8_gemv_q8_parts(torch.zeros(70), [q], [s]).abs().max() == 0
    args = (torch.randn(1, 70, generator=g), [q], [s])
    torch.library.opcheck(
        torch.ops.lmforge_ext.int8_gemv_q8.default,
        args,
        test_utils=("test_schema", "test_faketensor"),
    )


@needs_q8
def test_q8_extreme_codes_do_not_saturate():
    """The AVX2 path sums pairs of u8 × s8 products in int16 (VPMADDUBSW): |w| ≤ 128 and
    |x_q| ≤ 127 keep 2 · 128 · 127 below 2^15 — checked at the extremes, −128 included."""
    q = torch.tensor([[-128] * 96, [127] * 96, [-128, 127] * 48], dtype=torch.int8)
    s = torch.ones(3)
    for x in (torch.full((1, 96), 2.0), torch.tensor([[2.0, -2.0] * 48])):
        y = gemv.int8_gemv_q8_parts(x, [q], [s])
        exact = (q.double() * x.double()).sum(-1)
        torch.testing.assert_close(y.double()[0], exact, rtol=1e-6, atol=1e-3)
