"""lmforge's one-token layer ops (`lmforge.nn.decode_layer`): `decode_pre` equals RMSNorm →
q/k/v product → RoPE on the q and k heads computed here with PyTorch (the RoPE of
`lmforge.nn.rope.rotate`), `decode_post` the residual output projection, RMSNorm, SwiGLU and
residual down projection; one token or several (each with its own position), with and
without biases, odd sizes; bad inputs named; and the engine's runner sends its decode steps
through them (biases, sliding windows), not its prefill nor Qwen3's q/k norms, with the
greedy tokens of the model's own forward."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.nn import decode_layer as dl
from lmforge.nn.panel_gemm import pack_panels, panel_gemm_available
from lmforge.nn.rope import rotate

pytestmark = pytest.mark.skipif(
    not (dl.decode_layer_available() and panel_gemm_available()),
    reason="lmforge's C++ ops unavailable",
)


def rand(*shape, g, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens", [1, 3, 16])
@pytest.mark.parametrize("shape", [(64, 4, 2, 16), (40, 3, 1, 10), (96, 6, 6, 8)])
def test_decode_pre_is_norm_product_rope(shape, tokens, bias):
    hidden, h, hkv, d = shape
    g = torch.Generator().manual_seed(hidden + h + tokens)
    n = (h + 2 * hkv) * d
    x, w = rand(tokens, hidden, g=g), torch.rand(hidden, generator=g) + 0.5
    weight, b = rand(n, hidden, g=g, scale=0.1), (rand(n, g=g) if bias else None)
    cos, sin = rand(tokens, d, g=g), rand(tokens, d, g=g)  # each token its own position
    got = dl.decode_pre(x, w, 1e-5, pack_panels(weight), n, b, cos, sin, h + hkv, d)
    qkv = F.linear(F.rms_norm(x, (hidden,), w, 1e-5), weight, b).view(tokens, h + 2 * hkv, d)
    rotated = rotate(qkv[:, : h + hkv], cos[:, None], sin[:, None])
    want = torch.cat([rotated, qkv[:, h + hkv :]], 1).view(tokens, n)
    assert got.shape == (tokens, n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("shape", [(64, 64, 96), (40, 30, 17), (96, 48, 256)])
def test_decode_post_is_the_rest_of_the_layer(shape, tokens, bias):
    hidden, width, inter = shape
    g = torch.Generator().manual_seed(hidden + inter + tokens)
    x, a = rand(tokens, hidden, g=g), rand(tokens, width, g=g)
    w = torch.rand(hidden, generator=g) + 0.5
    wo, wgu, wd = (rand(hidden, width, g=g, scale=0.1), rand(2 * inter, hidden, g=g, scale=0.1),
                   rand(hidden, inter, g=g, scale=0.1))  # fmt: skip
    bo, bgu, bd = ((rand(hidden, g=g), rand(2 * inter, g=g), rand(hidden, g=g)) if bias
                   else (None, None, None))  # fmt: skip
    got = dl.decode_post(x, a, (pack_panels(wo), bo), w, 1e-6, (pack_panels(wgu), bgu), inter,
                         (pack_panels(wd), bd))  # fmt: skip
    mid = x + F.linear(a, wo, bo)
    gu = F.linear(F.rms_norm(mid, (hidden,), w, 1e-6), wgu, bgu)
    want = mid + F.linear(F.silu(gu[:, :inter]) * gu[:, inter:], wd, bd)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_named():
    g = torch.Generator().manual_seed(0)
    x, w = rand(1, 32, g=g), torch.ones(32)
    panels = pack_panels(rand(64, 32, g=g))
    cos = sin = torch.ones(1, 8)
    with pytest.raises(RuntimeError, match="the norm's weight must be"):
        dl.decode_pre(x, torch.ones(31), 1e-6, panels, 64, None, cos, sin, 4, 8)
    with pytest.raises(RuntimeError, match=r"the q/k/v panels must be .*\[4, 32, 16\]"):
        dl.decode_pre(x, w, 1e-6, pack_panels(rand(64, 30, g=g)), 64, None, cos, sin, 4, 8)
    with pytest.raises(RuntimeError, match="9 rotated heads of 8 do not fit 64"):
        dl.decode_pre(x, w, 1e-6, panels, 64, None, cos, sin, 9, 8)
    with pytest.raises(RuntimeError, match="the q/k/v bias must be"):
        dl.decode_pre(x, w, 1e-6, panels, 64, torch.ones(63), cos, sin, 4, 8)
    with pytest.raises(RuntimeError, match=r"cos must be .*\[1, 8\]"):
        dl.decode_pre(x, w, 1e-6, panels, 64, None, torch.ones(2, 8), sin, 4, 8)
    with pytest.raises(RuntimeError, match="the down panels must be"):
        dl.decode_post(x, rand(1, 16, g=g), (pack_panels(rand(32, 16, g=g)), None), w, 1e-6,
                       (pack_panels(rand(48, 32, g=g)), None), 24,
                       (pack_panels(rand(32, 23, g=g)), None))  # fmt: skip


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("LMFORGE_DECODE_LAYER", "0")
    assert not dl.decode_layer_available()


@pytest.mark.parametrize(
    "overrides",
    [{}, {"qkv_bias": True, "o_bias": True, "mlp_bias": True}, {"sliding_window": 5},
     {"qk_norm": True}],
    ids=["plain", "biases", "window", "qwen3"],
)  # fmt: skip
def test_runner_decode_steps_use_the_ops(monkeypatch, overrides, greedy_by_forward):
    import lmforge.infer.runner as runner_module
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.nn.panel_gemm import panel_gemm_preferred

    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "1")
    if not panel_gemm_preferred():
        pytest.skip("no AVX2 + FMA: no panels, so no one-token ops")
    calls = []
    real = runner_module.decode_pre
    monkeypatch.setattr(runner_module, "decode_pre",
                        lambda *a: calls.append(a[0].shape) or real(*a))  # fmt: skip
    torch.manual_seed(0)
    model = CausalLM(preset_config("tiny", vocab_size=64, **overrides)).eval()
    with torch.no_grad():  # zero-init biases would hide a missing bias
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    engine = Engine(model)
    prompts = [list(range(1, 14)), [9, 8, 7, 6, 5, 4, 3]]
    got = [o.token_ids for o in engine.generate(prompts, params)]
    assert got == [greedy_by_forward(model, p, 12) for p in prompts]
    qwen3 = overrides.get("qk_norm", False)
    assert engine.runner.layer_ops == (not qwen3)
    layers = len(model.model.layers)  # a 20-token prefill: PyTorch; 11 two-token steps: the ops
    assert calls == ([] if qwen3 else [(2, 64)] * (11 * layers))
    if not qwen3:  # a short prefill (≤ 16 tokens) is a step like any other
        calls.clear()
        assert engine.generate([[5, 6, 7]], params)[0].token_ids == greedy_by_forward(
            model, [5, 6, 7], 12
        )
        assert calls == [(3, 64)] * layers + [(1, 64)] * (11 * layers)
