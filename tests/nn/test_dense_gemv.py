"""lmforge's one-row dense op (`lmforge.nn.dense_gemv`): equal to ``x Wᵀ`` (computed in float64
here from the same fp32 or bf16 weights) up to summation order on shapes that exercise the
kernel's tails (K not a multiple of 16 or 128, odd N), on 1 and 2 threads, through the AVX-512
and the portable loops; parts concatenated; bad inputs named; the eager runner's one-row
products go through it (fp32 and bf16 models); its fake implementation traces under
``torch.compile``."""

import pytest
import torch

from lmforge.nn import dense_gemv as gemv

pytestmark = pytest.mark.skipif(
    not gemv.dense_gemv_available(),
    reason=f"dense_gemv unavailable: {gemv.dense_gemv_unavailable_reason()}",
)

SHAPES = [(1, 1), (3, 7), (17, 64), (33, 100), (64, 128), (5, 300), (31, 1376), (512, 512)]


def reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x Wᵀ`` in float64; with bf16 weights ``x`` is rounded to bf16 first (the op's rule)."""
    if w.dtype == torch.bfloat16:
        x = x.bfloat16()
    return (w.double() * x.double().reshape(1, -1)).sum(-1).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("portable", [False, True], ids=["best", "portable"])
def test_equals_the_row_products(threads, portable, dtype, torch_threads):
    g = torch.Generator().manual_seed(0)
    torch_threads(threads)
    for n, k in SHAPES:
        w, x = torch.randn(n, k, generator=g).to(dtype), torch.randn(1, k, generator=g)
        y = gemv.dense_gemv_parts(x, [w], portable=portable)
        assert y.shape == (1, n) and y.dtype == torch.float32
        torch.testing.assert_close(y[0], reference(x, w), rtol=1e-5, atol=1e-4)


def test_parts_are_concatenated_and_x_may_be_1d():
    g = torch.Generator().manual_seed(1)
    parts = [torch.randn(n, 200, generator=g) for n in (7, 1, 12)]
    x = torch.randn(200, generator=g)
    y = gemv.dense_gemv_parts(x, parts)
    assert y.shape == (20,)
    torch.testing.assert_close(y, torch.cat([reference(x, w) for w in parts]))
    noncontiguous = torch.randn(200, 9, generator=g).t()
    torch.testing.assert_close(
        gemv.dense_gemv(x[None], noncontiguous)[0], reference(x, noncontiguous)
    )


def test_bad_inputs_are_named():
    x = torch.randn(1, 8)
    with pytest.raises(RuntimeError, match="float32 \\[N, K\\] with K = 8"):
        gemv.dense_gemv(x, torch.randn(4, 9))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        gemv.dense_gemv(x, torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="bfloat16 \\[N, K\\]"):  # one dtype per call
        gemv.dense_gemv_parts(x, [torch.randn(4, 8).bfloat16(), torch.randn(4, 8)])
    with pytest.raises(RuntimeError, match="x must be"):
        gemv.dense_gemv(torch.randn(2, 8), torch.randn(4, 8))


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("LMFORGE_DENSE_GEMV", "0")
    assert not gemv.dense_gemv_available()
    assert "LMFORGE_DENSE_GEMV=0" in gemv.dense_gemv_unavailable_reason()


def test_traces_under_torch_compile():
    w = torch.randn(24, 40)

    def f(x):
        return gemv.dense_gemv(torch.relu(x), w) * 2

    x = torch.randn(1, 40)
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), f(x))


def test_the_eager_runner_uses_it_for_one_row(monkeypatch):
    """`InferenceRunner`'s dense projections send one fp32 row through the op over the
    layers' own weights (no copy), and agree with ``nn.Linear`` within float rounding
    (where lmforge's panel GEMM is not preferred: turned off here)."""
    import lmforge.infer.runner as runner_module
    from lmforge.infer.runner import _projection

    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "0")
    calls = []
    real = runner_module.dense_gemv_parts
    monkeypatch.setattr(runner_module, "dense_gemv_parts",
                        lambda x, w: calls.append(x.shape[0]) or real(x, w))  # fmt: skip

    g = torch.Generator().manual_seed(2)
    lins = [torch.nn.Linear(48, n, bias=True) for n in (16, 8, 8)]
    proj = _projection(*lins)
    assert proj.rows is not None and all(
        r.data_ptr() == lin.weight.data_ptr() for r, lin in zip(proj.rows, lins)
    )
    x = torch.randn(1, 48, generator=g)
    with torch.no_grad():
        expected = torch.cat([lin(x) for lin in lins], -1)
    torch.testing.assert_close(proj(x), expected, rtol=1e-5, atol=1e-5)
    assert calls == [1]
    torch.testing.assert_close(proj(x.repeat(3, 1)), expected.repeat(3, 1), rtol=1e-5, atol=1e-5)


def test_a_bf16_models_eager_decode_uses_it():
    """A bf16 model's one-row runner products go through the op (fp32 sums of the exact
    widened weights, rounded to bf16 once) and agree with ``nn.Linear`` in bf16."""
    from lmforge.infer.runner import _projection

    g = torch.Generator().manual_seed(4)
    lins = [torch.nn.Linear(64, n, bias=False).bfloat16() for n in (32, 16)]
    proj = _projection(*lins)
    assert proj.rows is not None and proj.rows[0].dtype == torch.bfloat16
    x = torch.randn(1, 64, generator=g).bfloat16()
    with torch.no_grad():
        expected = torch.cat([lin(x) for lin in lins], -1)
    got = proj(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
