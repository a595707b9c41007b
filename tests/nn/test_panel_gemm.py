"""lmforge's panel GEMM (`lmforge.nn.panel_gemm`): the panel layout in closed form; products
equal to ``x Wᵀ`` (float64 here) on shapes that exercise every tail (one row: groups of four
panels and the rest; rows not a multiple of the 6-row tile or the 72-row chunk, N not a
multiple of 16, K = 1), through the AVX2 and the
portable loops, on 1 and 2 threads; bad inputs named; the engine's runner and its decode step
use it for several rows when it is preferred (forced here), with the tokens of the model's
own forward. Int8 panels (weight-only int8: ``y = s ⊙ (x qᵀ)``) the same way: layout, products
on the same shapes, bad inputs, and the runner's int8 projections through them."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.nn import panel_gemm as pg

needs_op = pytest.mark.skipif(
    not pg.panel_gemm_available(),
    reason=f"panel_gemm unavailable: {pg.panel_gemm_unavailable_reason()}",
)

SHAPES = [(1, 1, 1), (1, 100, 37), (1, 128, 16), (2, 16, 8), (5, 17, 3), (6, 33, 64), (7, 100, 37), (16, 256, 512),
          (36, 48, 20), (37, 15, 9), (72, 20, 33), (80, 70, 130), (150, 40, 7)]  # fmt: skip


def test_pack_panels_layout():
    """``P[p, k, j] = W[16p + j, k]``, zero rows past N."""
    w = torch.arange(37 * 5, dtype=torch.float32).reshape(37, 5)
    p = pg.pack_panels(w)
    assert p.shape == (3, 5, 16) and p.is_contiguous()
    for n in range(48):
        for k in range(5):
            want = w[n, k] if n < 37 else 0.0
            assert p[n // 16, k, n % 16] == want
    with pytest.raises(ValueError, match="2-D fp32"):
        pg.pack_panels(w.double())
    with pytest.raises(ValueError, match="2-D fp32"):
        pg.pack_panels(w[0])


@needs_op
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("portable", [False, True], ids=["best", "portable"])
def test_equals_the_matrix_product(threads, portable, torch_threads):
    g = torch.Generator().manual_seed(0)
    torch_threads(threads)
    for m, n, k in SHAPES:
        w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
        y = pg.panel_gemm(x, pg.pack_panels(w), n, portable=portable)
        assert y.shape == (m, n) and y.dtype == torch.float32
        want = (x.double() @ w.double().t()).float()
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-4)


def test_pack_int8_panels_layout():
    q = (torch.arange(37 * 5) % 251 - 125).to(torch.int8).reshape(37, 5)
    p = pg.pack_int8_panels(q)
    assert p.shape == (3, 5, 16) and p.dtype == torch.int8 and p.is_contiguous()
    assert torch.equal(p.view(-1, 16)[:5], q[:16].t())  # panel 0: columns are the rows of q
    assert torch.equal(p[2, :, 5:], torch.zeros(5, 11, dtype=torch.int8))  # padding
    with pytest.raises(ValueError, match="2-D int8"):
        pg.pack_int8_panels(q.float())


@needs_op
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("portable", [False, True], ids=["best", "portable"])
def test_int8_panels_equal_the_scaled_product(threads, portable, torch_threads):
    from lmforge.nn.quant import quantize_int8_per_channel

    g = torch.Generator().manual_seed(3)
    torch_threads(threads)
    for m, n, k in SHAPES:
        q, s = quantize_int8_per_channel(torch.randn(n, k, generator=g))
        x = torch.randn(m, k, generator=g)
        y = pg.int8_panel_gemm(x, pg.pack_int8_panels(q), s, n, portable=portable)
        assert y.shape == (m, n) and y.dtype == torch.float32
        want = ((x.double() @ q.double().t()) * s.double()).float()
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-4)


@needs_op
def test_int8_panels_name_bad_inputs():
    q = torch.randint(-127, 128, (20, 8), dtype=torch.int8)
    p, s = pg.pack_int8_panels(q), torch.rand(20)
    with pytest.raises(RuntimeError, match=r"scales must be contiguous fp32 \[20\]"):
        pg.int8_panel_gemm(torch.randn(3, 8), p, s[:19], 20)
    with pytest.raises(RuntimeError, match=r"panels must be contiguous int8 \[P, K, 16\]"):
        pg.int8_panel_gemm(torch.randn(3, 8), pg.pack_panels(q.float()), s, 20)
    with pytest.raises(RuntimeError, match="x has 7 columns, the panels 8"):
        pg.int8_panel_gemm(torch.randn(3, 7), p, s, 20)


@needs_op
def test_strided_rows_and_empty_inputs():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 24, generator=g)
    wide = torch.randn(9, 48, generator=g)
    x = wide[:, ::2]  # not contiguous
    torch.testing.assert_close(pg.panel_gemm(x, pg.pack_panels(w), 40), F.linear(x, w))
    assert pg.panel_gemm(torch.randn(0, 24), pg.pack_panels(w), 40).shape == (0, 40)


@needs_op
def test_bad_inputs_are_named():
    p = pg.pack_panels(torch.randn(20, 8))
    with pytest.raises(RuntimeError, match="x has 7 columns, the panels 8"):
        pg.panel_gemm(torch.randn(3, 7), p, 20)
    with pytest.raises(RuntimeError, match="2 panels cannot hold 40 outputs"):
        pg.panel_gemm(torch.randn(3, 8), p, 40)
    with pytest.raises(RuntimeError, match="2-D fp32"):
        pg.panel_gemm(torch.randn(3, 8).double(), p, 20)
    with pytest.raises(RuntimeError, match=r"contiguous fp32 \[P, K, 16\]"):
        pg.panel_gemm(torch.randn(3, 8), p.transpose(0, 1), 20)


def test_preference_follows_the_environment(monkeypatch):
    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "0")
    assert not pg.panel_gemm_available() and not pg.panel_gemm_preferred()
    assert "LMFORGE_PANEL_GEMM=0" in pg.panel_gemm_unavailable_reason()
    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "1")
    if pg.panel_gemm_available() and torch.ops.lmforge_ext.panel_gemm_isa() == "avx2":
        assert pg.panel_gemm_preferred()  # forced, whatever the CPU's widest vectors


def _tiny_model():
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    torch.manual_seed(0)
    return CausalLM(preset_config("tiny", vocab_size=64)).eval()


@needs_op
@pytest.mark.parametrize("compile_decode", [False, "eager"], ids=["runner", "decode-step"])
def test_engine_runs_several_rows_through_the_panels(
    monkeypatch, compile_decode, greedy_by_forward
):
    """Forced on: the runner holds panels instead of oneDNN's copy; prefill and the
    two-request decode steps (the runner's, or the decode step's) call the op, and the
    runner's one-row products; the tokens are those of the model's own forward."""
    import lmforge.infer.decode_step as step_module
    import lmforge.infer.runner as runner_module
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams

    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "1")
    if not pg.panel_gemm_preferred():
        pytest.skip("no AVX2 + FMA: the panels run the portable loop only")
    calls = []
    for module in (runner_module, step_module):
        real = module.panel_gemm
        monkeypatch.setattr(module, "panel_gemm",
                            lambda x, p, n, real=real: calls.append(x.shape[0]) or real(x, p, n))  # fmt: skip
    model = _tiny_model()
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    engine = Engine(model, compile_decode=compile_decode)
    got = [o.token_ids for o in engine.generate(prompts, params)]
    assert engine.runner.head.panels is not None and engine.runner.head.packed is None
    assert calls and min(calls) >= 2
    assert got == [greedy_by_forward(model, p, 6) for p in prompts]
    if not compile_decode:  # one request: the runner's one-row products too
        calls.clear()
        one = Engine(model).generate(prompts[:1], params)[0].token_ids
        assert one == got[0] and 1 in calls
    if compile_decode:
        assert engine.compiled._inputs(False)["head"][1][0] == "panels"


@needs_op
def test_runner_moves_its_panels_into_huge_pages(monkeypatch, greedy_by_forward):
    """The runner hands its panel copies to `copy_to_huge_pages` once per rebuild and keeps
    what comes back (the tiny model's panels are below a huge page: a stand-in copies)."""
    import lmforge.infer.runner as runner_module
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams

    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "1")
    if not pg.panel_gemm_preferred():
        pytest.skip("no AVX2 + FMA: the panels run the portable loop only")
    handed = []

    def stand_in(tensors):
        handed.append(list(tensors))
        return [t.clone() for t in tensors]

    monkeypatch.setattr(runner_module, "copy_to_huge_pages", stand_in)
    model = _tiny_model()
    engine = Engine(model)
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    got = engine.generate([[1, 2, 3]], params)[0].token_ids
    assert len(handed) == 1 and len(handed[0]) == 4 * len(model.model.layers) + 1
    runner = engine.runner
    kept = [runner.head.panels] + [p.panels for w in runner.layers for p in vars(w).values()]
    assert {t.data_ptr() for t in kept}.isdisjoint({t.data_ptr() for t in handed[0]})
    assert got == greedy_by_forward(model, [1, 2, 3], 4)
