"""lmforge's one-token layer ops (`lmforge.nn.decode_layer`): `decode_pre` equals RMSNorm →
q/k/v product → RoPE on the q and k heads computed here with PyTorch (the RoPE of
`lmforge.nn.rope.rotate`), `decode_post` the residual output projection, RMSNorm, SwiGLU and
residual down projection; one token or several (each with its own position), with and
without biases, odd sizes, fp32 panels and int8 codes with scales (``s ⊙ (q x)``); bad
inputs named; and the engine's runner sends its steps through them — plain steps (prefill and
decode) all layers at once, steps with other tokens layer by layer (biases, sliding windows,
an int8 model's steps) — but not Qwen3's q/k norms, with the greedy tokens of the model's
own forward."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.nn import decode_layer as dl
from lmforge.nn.panel_gemm import pack_panels, panel_gemm_available
from lmforge.nn.quant import quantize_int8_per_channel
from lmforge.nn.rope import rotate

pytestmark = pytest.mark.skipif(
    not (dl.decode_layer_available() and panel_gemm_available()),
    reason="lmforge's C++ ops unavailable",
)


def rand(*shape, g, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def op_weight(weight: torch.Tensor, kind: str):
    """``weight`` as the op takes it, and the matrix the op multiplies by: fp32 panels of
    ``weight`` itself, or its int8 codes and scales (the dequantised matrix ``s ⊙ q``)."""
    if kind == "fp32":
        return pack_panels(weight), weight
    q, s = quantize_int8_per_channel(weight)
    return (q, s), q.float() * s[:, None]


@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens", [1, 3, 16])
@pytest.mark.parametrize("shape", [(64, 4, 2, 16), (40, 3, 1, 10), (96, 6, 6, 8)])
def test_decode_pre_is_norm_product_rope(shape, tokens, bias, kind):
    hidden, h, hkv, d = shape
    g = torch.Generator().manual_seed(hidden + h + tokens)
    n = (h + 2 * hkv) * d
    x, w = rand(tokens, hidden, g=g), torch.rand(hidden, generator=g) + 0.5
    given, weight = op_weight(rand(n, hidden, g=g, scale=0.1), kind)
    b = rand(n, g=g) if bias else None
    cos, sin = rand(tokens, d, g=g), rand(tokens, d, g=g)  # each token its own position
    got = dl.decode_pre(x, w, 1e-5, given, n, b, cos, sin, h + hkv, d)
    qkv = F.linear(F.rms_norm(x, (hidden,), w, 1e-5), weight, b).view(tokens, h + 2 * hkv, d)
    rotated = rotate(qkv[:, : h + hkv], cos[:, None], sin[:, None])
    want = torch.cat([rotated, qkv[:, h + hkv :]], 1).view(tokens, n)
    assert got.shape == (tokens, n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("shape", [(64, 64, 96), (40, 30, 17), (96, 48, 256)])
def test_decode_post_is_the_rest_of_the_layer(shape, tokens, bias, kind):
    hidden, width, inter = shape
    g = torch.Generator().manual_seed(hidden + inter + tokens)
    x, a = rand(tokens, hidden, g=g), rand(tokens, width, g=g)
    w = torch.rand(hidden, generator=g) + 0.5
    (go, wo), (ggu, wgu), (gd, wd) = (
        op_weight(rand(hidden, width, g=g, scale=0.1), kind),
        op_weight(rand(2 * inter, hidden, g=g, scale=0.1), kind),
        op_weight(rand(hidden, inter, g=g, scale=0.1), kind),
    )
    bo, bgu, bd = ((rand(hidden, g=g), rand(2 * inter, g=g), rand(hidden, g=g)) if bias
                   else (None, None, None))  # fmt: skip
    got = dl.decode_post(x, a, (go, bo), w, 1e-6, (ggu, bgu), inter, (gd, bd))
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
    with pytest.raises(RuntimeError, match=r"the q/k/v weights must be .*panels \[4, 32, 16\]"):
        dl.decode_pre(x, w, 1e-6, pack_panels(rand(64, 30, g=g)), 64, None, cos, sin, 4, 8)
    with pytest.raises(RuntimeError, match="9 rotated heads of 8 do not fit 64"):
        dl.decode_pre(x, w, 1e-6, panels, 64, None, cos, sin, 9, 8)
    with pytest.raises(RuntimeError, match="the q/k/v bias must be"):
        dl.decode_pre(x, w, 1e-6, panels, 64, torch.ones(63), cos, sin, 4, 8)
    with pytest.raises(RuntimeError, match=r"cos must be .*\[1, 8\]"):
        dl.decode_pre(x, w, 1e-6, panels, 64, None, torch.ones(2, 8), sin, 4, 8)
    q, s = quantize_int8_per_channel(rand(64, 32, g=g))
    with pytest.raises(
        RuntimeError, match=r"q/k/v weights must be contiguous int8 codes \[64, 32\]"
    ):
        dl.decode_pre(x, w, 1e-6, (q[:, :30].contiguous(), s), 64, None, cos, sin, 4, 8)
    with pytest.raises(RuntimeError, match=r"the int8 scales must be .*64 values"):
        dl.decode_pre(x, w, 1e-6, (q, s[:63]), 64, None, cos, sin, 4, 8)
    with pytest.raises(RuntimeError, match="are int8: give their scales"):
        torch.ops.lmforge_ext.decode_pre(x, w, 1e-6, q, None, 64, None, cos, sin, 4, 8)
    with pytest.raises(RuntimeError, match="are fp32 panels, which take no scales"):
        torch.ops.lmforge_ext.decode_pre(x, w, 1e-6, panels, s, 64, None, cos, sin, 4, 8)
    with pytest.raises(RuntimeError, match="the down weights must be"):
        dl.decode_post(x, rand(1, 16, g=g), (pack_panels(rand(32, 16, g=g)), None), w, 1e-6,
                       (pack_panels(rand(48, 32, g=g)), None), 24,
                       (pack_panels(rand(32, 23, g=g)), None))  # fmt: skip


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("LMFORGE_DECODE_LAYER", "0")
    assert not dl.decode_layer_available()


def spy_ops(monkeypatch, runner_module) -> list:
    """Record the runner's calls of the layer ops: ("pre", tokens' shape) per layer of a step
    run layer by layer, ("stack", shape) per step run as one `decode_layers` call."""
    calls = []
    pre, stack = runner_module.decode_pre, runner_module.decode_layers
    monkeypatch.setattr(runner_module, "decode_pre",
                        lambda *a: calls.append(("pre", tuple(a[0].shape))) or pre(*a))  # fmt: skip
    monkeypatch.setattr(runner_module, "decode_layers",
                        lambda *a: calls.append(("stack", tuple(a[0].shape))) or stack(*a))  # fmt: skip
    return calls


@pytest.mark.parametrize(
    "overrides",
    [{}, {"qkv_bias": True, "o_bias": True, "mlp_bias": True}, {"sliding_window": 5},
     {"qk_norm": True}],
    ids=["plain", "biases", "window", "qwen3"],
)  # fmt: skip
def test_runner_decode_steps_use_the_ops(monkeypatch, overrides, greedy_by_forward):
    import lmforge.infer.engine as engine_module
    import lmforge.infer.runner as runner_module
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.nn.panel_gemm import panel_gemm_preferred

    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "1")
    if not panel_gemm_preferred():
        pytest.skip("no AVX2 + FMA: no panels, so no one-token ops")
    calls = spy_ops(monkeypatch, runner_module)
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
    assert engine.runner.layer_ops == (0 if qwen3 else runner_module.LAYER_OPS_MAX_TOKENS)
    layers = len(model.model.layers)  # the 20-token prefill step at once, then 11 decode steps
    expected = [("stack", (20, 64))] + [("stack", (2, 64))] * 11
    assert calls == ([] if qwen3 else expected)
    if qwen3:
        return
    calls.clear()  # a short prefill too
    assert engine.generate([[5, 6, 7]], params)[0].token_ids == greedy_by_forward(
        model, [5, 6, 7], 12
    )
    assert calls == [("stack", (3, 64))] + [("stack", (1, 64))] * 11
    # a step whose tokens are not all plain causal rows (drafts, images: no `step_rows`)
    # runs its layers one by one through the per-layer ops
    monkeypatch.setattr(engine_module, "_step_rows", lambda chunks, positions: None)
    calls.clear()
    got = [o.token_ids for o in engine.generate(prompts, params)]
    assert got == [greedy_by_forward(model, p, 12) for p in prompts]
    assert calls == [("pre", (20, 64))] * layers + [("stack", (2, 64))] * 11


@pytest.mark.parametrize("panels", [False, True], ids=["codes", "int8-panels"])
def test_int8_models_run_their_decode_steps_through_the_ops(monkeypatch, greedy_by_forward,
                                                            panels):  # fmt: skip
    """A weight-only int8 model (biases too), greedy tokens those of ``model.forward``.
    Without panels: one-token steps go through the ops with the layers' own codes and scales
    (no copy), two-token steps keep the PyTorch path (the op would stream the codes once per
    row). With int8 panels (AVX2 CPUs): every decode step of ≤ 16 tokens goes through the ops
    with the panels and the layers' own scales, one-token steps with the codes."""
    import lmforge.infer.runner as runner_module
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams
    from lmforge.models.presets import preset_config
    from lmforge.models.quantize import quantize_model
    from lmforge.models.transformer import CausalLM
    from lmforge.nn.panel_gemm import pack_int8_panels, panel_gemm_preferred

    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "1" if panels else "0")
    if panels and not panel_gemm_preferred():
        pytest.skip("no AVX2 + FMA: no int8 panels")
    calls = spy_ops(monkeypatch, runner_module)
    torch.manual_seed(1)
    model = CausalLM(preset_config("tiny", vocab_size=64, qkv_bias=True, mlp_bias=True)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    model = quantize_model(model, "int8")
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    engine = Engine(model)
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8]]
    got = [o.token_ids for o in engine.generate(prompts, params)]
    assert got == [greedy_by_forward(model, p, 10) for p in prompts]
    qkv = engine.runner.layers[0].qkv
    one, several = engine.runner._stacks
    if panels:  # both prefills (12 tokens) in one call, then 9 two-token decode steps
        assert engine.runner.layer_ops == runner_module.LAYER_OPS_MAX_TOKENS
        assert calls == [("stack", (12, 64))] + [("stack", (2, 64))] * 9
        assert torch.equal(several.weights[0], pack_int8_panels(qkv.module.weight))
        assert several.scales[0] is qkv.module.weight_scale  # the stacked layer's own scales
        calls.clear()
    else:
        assert engine.runner.layer_ops == 1 and calls == []  # two-token steps: PyTorch
        assert several is None
    got = engine.generate(prompts[:1], params)[0].token_ids  # one-token steps: the codes
    assert got == greedy_by_forward(model, prompts[0], 10)
    assert calls[-9:] == [("stack", (1, 64))] * 9
    assert one.weights[0] is qkv.module.weight and one.scales[0] is qkv.module.weight_scale


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("window", [None, 3])
def test_decode_layers_is_the_layers_one_after_another(kind, window, kv_dtype):
    """`decode_layers` over two layers equals, layer by layer: `decode_pre`, the k/v rows
    written into their slots, the paged attention op, `decode_post` — and leaves the same
    K/V in the cache (rows of different context lengths, scattered blocks; an fp16 cache:
    the rows rounded as ``Tensor.to`` rounds them)."""
    from lmforge.infer.paged_attention import paged_decode_attention

    g = torch.Generator().manual_seed(7)
    hidden, h, hkv, d, inter, rows, bs = 48, 4, 2, 8, 40, 3, 4
    n = (h + 2 * hkv) * d
    layers = []
    for _ in range(2):
        projections = [(op_weight(rand(o, i, g=g, scale=0.2), kind)[0], rand(o, g=g))
                       for o, i in ((n, hidden), (hidden, h * d), (2 * inter, hidden),
                                    (hidden, inter))]  # fmt: skip
        norms = (torch.rand(hidden, generator=g) + 0.5, torch.rand(hidden, generator=g) + 0.5)
        layers.append((norms[0], 1e-5, norms[1], 1e-6, window, projections))
    stack = dl.StackWeights.of(layers)
    keys = [rand(40, hkv, d, g=g).to(kv_dtype) for _ in range(2)]
    values = [rand(40, hkv, d, g=g).to(kv_dtype) for _ in range(2)]
    tables = torch.tensor([[3, 7, 1], [9, 0, 2], [5, 4, 8]])
    lengths = torch.tensor([9, 4, 12])  # the new token is the last visible one
    slots = torch.stack([tables[r, (lengths[r] - 1) // bs] * bs + (lengths[r] - 1) % bs
                         for r in range(rows)])  # fmt: skip
    x, cos, sin = rand(rows, hidden, g=g), rand(rows, d, g=g), rand(rows, d, g=g)
    ref_k, ref_v = [k.clone() for k in keys], [v.clone() for v in values]
    want = x
    for i, (n1, e1, n2, e2, win, (qkv, o, gu, down)) in enumerate(layers):
        y = dl.decode_pre(want, n1, e1, qkv[0], n, qkv[1], cos, sin, h + hkv, d).view(rows, -1, d)
        ref_k[i].index_copy_(0, slots, y[:, h : h + hkv].to(kv_dtype))
        ref_v[i].index_copy_(0, slots, y[:, h + hkv :].to(kv_dtype))
        a = paged_decode_attention(y[:, :h], ref_k[i], ref_v[i], tables, lengths, bs, win)
        want = dl.decode_post(want, a.reshape(rows, -1), o, n2, e2, gu, inter, down)
    got = dl.decode_layers(x, cos, sin, (h, hkv, d, inter), stack, keys, values, slots, tables,
                           lengths, bs)  # fmt: skip
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for mine, ref in zip(keys + values, ref_k + ref_v):
        assert torch.equal(mine, ref)
    wf = torch.rand(hidden, generator=g) + 0.5  # the model's last norm, folded in
    normed = dl.decode_layers(x, cos, sin, (h, hkv, d, inter), stack, keys, values, slots,
                              tables, lengths, bs, final_norm=(wf, 1e-5))  # fmt: skip
    torch.testing.assert_close(normed, F.rms_norm(want, (hidden,), wf, 1e-5), rtol=1e-5, atol=1e-5)
    # the kept rows alone after the last layer's K/V writes: their outputs, the same cache
    for keep in (torch.tensor([2]), torch.tensor([2, 0])):
        cache = [t.clone() for t in keys + values]
        kept = dl.decode_layers(x, cos, sin, (h, hkv, d, inter), stack, cache[:2], cache[2:],
                                slots, tables, lengths, bs, (wf, 1e-5), keep)  # fmt: skip
        torch.testing.assert_close(kept, normed[keep], rtol=1e-6, atol=1e-6)
        assert all(torch.equal(a, b) for a, b in zip(cache, keys + values))


def test_decode_layers_names_bad_inputs():
    g = torch.Generator().manual_seed(0)
    layer = (torch.ones(32), 1e-6, torch.ones(32), 1e-6, None,
             [(pack_panels(rand(o, i, g=g)), None) for o, i in ((64, 32), (32, 32), (48, 32),
                                                               (32, 24))])  # fmt: skip
    stack = dl.StackWeights.of([layer])
    x, cos = rand(2, 32, g=g), torch.ones(2, 8)
    keys, values = [torch.zeros(8, 2, 8)], [torch.zeros(8, 2, 8)]
    tables, lengths = torch.tensor([[0, 1], [1, 0]]), torch.tensor([1, 2])
    shape = (4, 2, 8, 24)
    with pytest.raises(RuntimeError, match="slot 8 of row 1 is outside the cache's 8 slots"):
        dl.decode_layers(x, cos, cos, shape, stack, keys, values, torch.tensor([0, 8]), tables,
                         lengths, 4)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"keep\[1\] = 2 is not one of the 2 rows"):
        dl.decode_layers(x, cos, cos, shape, stack, keys, values, torch.tensor([0, 1]), tables,
                         lengths, 4, keep=torch.tensor([0, 2]))  # fmt: skip
    with pytest.raises(RuntimeError, match="keep must be contiguous int64 row indices"):
        dl.decode_layers(x, cos, cos, shape, stack, keys, values, torch.tensor([0, 1]), tables,
                         lengths, 4, keep=torch.tensor([0.0]))  # fmt: skip
    with pytest.raises(RuntimeError, match="for 2 layers give 2 norms"):
        dl.decode_layers(x, cos, cos, shape, stack, keys * 2, values * 2, torch.tensor([0, 1]),
                         tables, lengths, 4)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"layer 0's keys and values must be .*\[slots, 2, 8\]"):
        dl.decode_layers(x, cos, cos, shape, stack, [torch.zeros(8, 4, 8)], values,
                         torch.tensor([0, 1]), tables, lengths, 4)  # fmt: skip
