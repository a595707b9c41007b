"""`InferenceRunner`: the engine's fused-weight forward equals ``CausalLM.forward`` on paged
batches for every architecture option, follows weight updates, and steps aside for models
it does not cover."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.infer.cache import PagedBatch, PagedKVCache, PrefillChunk
from lmforge.infer.engine import Engine
from lmforge.infer.packed_gemm import packing_enabled
from lmforge.infer.params import SamplingParams
from lmforge.infer.runner import InferenceRunner
from lmforge.models.transformer import CausalLM
from lmforge.nn.dense_gemv import dense_gemv_available

BASE = dict(
    vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    initializer_range=0.3,
)  # fmt: skip
OPTIONS = [
    dict(),
    dict(num_key_value_heads=4, tie_word_embeddings=True),
    dict(qkv_bias=True, o_bias=True, mlp_bias=True),
    dict(qk_norm=True, head_dim=16),
    dict(sliding_window=5),
    dict(rope_scaling=dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=32)),
]


def make_model(seed: int = 0, **overrides) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(ModelConfig(**{**BASE, **overrides})).eval()
    with torch.no_grad():  # non-trivial biases and norm gains
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    return model


def paged_steps(model, call, seqs=((0, 11), (1, 6)), bs: int = 4, rows: bool = False,
                cache_dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:  # fmt: skip
    """Prefill two prompts (the first in two chunks), then two decode steps of both;
    ``call(ids, positions, batch, keep)`` runs the model. ``rows``: each step also carries
    every token as a causal row of its own (``step_rows``, as the engine sets it on CPU).
    Returns each step's logits."""
    cfg = model.config
    cache = PagedKVCache(cfg.num_hidden_layers, 12, bs, cfg.num_key_value_heads, cfg.head_dim,
                         dtype=cache_dtype)  # fmt: skip
    cache.zero_blocks(list(range(12)))
    tables = [[5, 0, 9, 2], [7, 3, 11]]
    g = torch.Generator().manual_seed(1)
    tokens = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for _, n in seqs]
    slot = lambda s, p: tables[s][p // bs] * bs + p % bs  # noqa: E731
    outs = []
    # step 1: first 7 tokens of seq 0 and all of seq 1; step 2: rest of seq 0 (past 7)
    plan = [[(0, 0, 7), (1, 0, 6)], [(0, 7, 4)], [(0, 11, 1), (1, 6, 1)], [(0, 12, 1), (1, 7, 1)]]
    for step in plan:
        decode = [c for c in step if c[2] == 1]
        chunks = decode + [c for c in step if c[2] > 1]
        ids, pos, slots, prefills = [], [], [], []
        for s, start, n in chunks:
            while len(tokens[s]) < start + n:  # decode: feed a deterministic token
                tokens[s].append((7 * len(tokens[s]) + s) % cfg.vocab_size)
            if n > 1:
                ctx = None
                if start:
                    ctx = torch.tensor([slot(s, p) for p in range(start + n)])
                prefills.append(PrefillChunk(len(ids), n, start, ctx))
            ids += tokens[s][start : start + n]
            pos += list(range(start, start + n))
            slots += [slot(s, p) for p in range(start, start + n)]
        batch = PagedBatch(cache, torch.tensor(slots), prefills=prefills)
        if rows:
            batch.step_rows = (
                torch.tensor([tables[s] + [0] * (4 - len(tables[s])) for s, _, n in chunks
                              for _ in range(n)]),
                torch.tensor(pos) + 1,
            )  # fmt: skip
        if decode:
            width = max(len(tables[s]) for s, _, _ in decode)
            batch.num_decode = len(decode)
            batch.decode_blocks = torch.tensor(
                [tables[s] + [0] * (width - len(tables[s])) for s, _, _ in decode]
            )
            batch.decode_positions = torch.tensor(pos[: len(decode)])
            batch.decode_lens = batch.decode_positions + 1
        keep = torch.arange(len(ids))
        outs.append(call(torch.tensor(ids), torch.tensor(pos), batch, keep))
    return outs


def model_call(model):
    @torch.inference_mode()
    def call(ids, pos, batch, keep):
        return model(ids[None], position_ids=pos[None], cache=batch, logits_to_keep=keep).logits[0]

    return call


def runner_call(runner):
    def call(ids, pos, batch, keep):
        assert runner.sync()
        return runner(ids, pos, int(pos.max()), batch, keep)

    return call


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "llama")
def test_runner_matches_model_forward_on_paged_batches(options):
    model = make_model(**options)
    assert InferenceRunner.unsupported_reason(model) is None
    expected = paged_steps(model, model_call(model))
    got = paged_steps(model, runner_call(InferenceRunner(model)))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [dict(), dict(qkv_bias=True, o_bias=True, mlp_bias=True), dict(sliding_window=5)],
    ids=["llama", "biases", "window"],
)
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_steps_with_every_token_a_row_match_model_forward(options, cache_dtype, monkeypatch):
    """Prefill chunks (one with a cached past) and decode rows as causal rows of their own
    (``step_rows``): with panels the runner takes each step in one `decode_layers` call
    (the C++ paged attention over the cache, this step's K/V written first), the same logits
    as ``model.forward``'s SDPA over the same cache (an fp16 cache: over its rounded K/V,
    which both read once written — the model's first chunk attends its own fresh K/V)."""
    from lmforge.infer import runner as runner_module

    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "1")
    model = make_model(**options)
    calls = []
    real = runner_module.decode_layers
    monkeypatch.setattr(runner_module, "decode_layers",
                        lambda *a: calls.append(a[0].shape[0]) or real(*a))  # fmt: skip
    runner = InferenceRunner(model)
    got = paged_steps(model, runner_call(runner), rows=True, cache_dtype=cache_dtype)
    expected = paged_steps(model, model_call(model), rows=True, cache_dtype=cache_dtype)
    tol = 1e-5 if cache_dtype == torch.float32 else 1e-2
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)
    if runner.layer_ops > 1:  # panels here (AVX2 + FMA): every step in one call
        assert calls == [13, 4, 2, 2]
    # logits of some rows only (a prefill's last token, as the engine asks): the last layer
    # runs those rows alone, the same logits
    last = lambda call: lambda ids, pos, batch, keep: call(ids, pos, batch, keep[-1:])  # noqa: E731
    got = paged_steps(model, last(runner_call(runner)), rows=True, cache_dtype=cache_dtype)
    expected = paged_steps(model, last(model_call(model)), rows=True, cache_dtype=cache_dtype)
    for e, g in zip(expected, got):
        assert g.shape == (1, model.config.vocab_size)
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)


def test_runner_follows_in_place_updates_and_replaced_parameters():
    model = make_model()
    runner = InferenceRunner(model)
    paged_steps(model, runner_call(runner))
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(-2)  # in place (optimizer-like)
    model.model.layers[0].self_attn.k_proj.weight = torch.nn.Parameter(
        torch.randn_like(model.model.layers[0].self_attn.k_proj.weight)
    )
    expected = paged_steps(model, model_call(model))
    got = paged_steps(model, runner_call(runner))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_generate_checks_the_weights_once_per_call_and_sees_changes_between_calls(monkeypatch):
    """`Engine.generate` checks the weights at its first step only (nothing in its loop
    can change them); an update between two calls is seen by the next one."""
    model = make_model()
    engine = Engine(model)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=0)
    calls = []
    sync = InferenceRunner.sync
    monkeypatch.setattr(InferenceRunner, "sync", lambda self: calls.append(1) or sync(self))
    first = engine.generate([[3, 4, 5]], params)[0]
    assert len(calls) == 1  # six steps, one check
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)  # in place, between calls
    second = engine.generate([[3, 4, 5]], params)[0]
    assert len(calls) == 2
    reference = Engine(make_model(), fused_weights=False)
    with torch.no_grad():
        reference.model.lm_head.weight.mul_(-1)
    assert second.token_ids == reference.generate([[3, 4, 5]], params)[0].token_ids
    assert second.token_ids != first.token_ids


def test_sync_rebuilds_exactly_when_a_source_changes():
    """`sync`'s per-step check (`InferenceRunner._unchanged`) sees every kind of change the
    full state does — in-place updates, replaced parameters, ``.data`` swaps, replaced
    linear layers (even around the same parameters), MLPs, layers and the LM head — and
    nothing else; the rebuilt copies still match ``model.forward``."""
    import copy

    model = make_model()
    runner = InferenceRunner(model)
    assert runner.sync()

    def rebuilt() -> bool:
        layers = runner.layers
        assert runner.sync()
        return runner.layers is not layers

    assert not rebuilt()
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[0].mlp
    with torch.no_grad():
        mlp.down_proj.weight.add_(0.5)
    assert rebuilt() and not rebuilt()
    attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight.detach() * 2)
    assert rebuilt() and not rebuilt()
    attn.q_proj.weight.data = attn.q_proj.weight.data * -1
    assert rebuilt() and not rebuilt()
    same = torch.nn.Linear(*reversed(mlp.gate_proj.weight.shape), bias=False)
    same.weight = mlp.gate_proj.weight  # a new module around the same parameter
    mlp.gate_proj = same
    assert rebuilt() and not rebuilt()
    model.model.layers[1].mlp = copy.deepcopy(model.model.layers[1].mlp)
    assert rebuilt() and not rebuilt()
    model.model.layers[0] = copy.deepcopy(model.model.layers[0])
    assert rebuilt() and not rebuilt()
    model.lm_head = copy.deepcopy(model.lm_head)
    assert rebuilt() and not rebuilt()
    runner.invalidate()
    assert rebuilt() and not rebuilt()
    expected = paged_steps(model, model_call(model))
    got = paged_steps(model, runner_call(runner))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_engines_on_one_model_share_its_runner_and_report_its_memory():
    model = make_model()
    a, b = Engine(model), Engine(model)
    assert a.runner is b.runner is InferenceRunner.for_model(model)
    a.generate([[1, 2, 3]], SamplingParams(max_tokens=2, temperature=0))
    weights = sum(p.numel() * 4 for n, p in model.named_parameters() if "norm" not in n)
    embed = model.model.embed_tokens.weight.numel() * 4
    # every linear (the untied LM head included): the oneDNN-packed copy for several rows
    # and the transposed one for one row — which lmforge's dense op (reading the model's own
    # weights) makes unnecessary where both it and the packed copy exist; on AVX2 CPUs one
    # copy in lmforge's 16-wide panels (`lmforge.nn.panel_gemm`) for every row count
    packed = packing_enabled(model.lm_head.weight)
    if a.runner.head.panels is not None:  # lmforge's panel copy instead (AVX2 CPUs): alone,
        padded = 0  # each fused projection's outputs padded to a multiple of 16
        for layer in model.model.layers:
            at, mlp = layer.self_attn, layer.mlp
            for group in ((at.q_proj, at.k_proj, at.v_proj), (at.o_proj,),
                          (mlp.gate_proj, mlp.up_proj), (mlp.down_proj,)):  # fmt: skip
                out = sum(m.out_features for m in group)
                padded += -(-out // 16) * 16 * group[0].in_features * 4
        head = model.lm_head
        padded += -(-head.out_features // 16) * 16 * head.in_features * 4
        assert a.runner.nbytes == padded
        return
    transposed = not (packed and dense_gemv_available())
    assert a.runner.nbytes == (int(packed) + int(transposed)) * (weights - embed)


def test_the_shared_runner_does_not_keep_its_model_alive():
    import gc
    import weakref

    model = make_model()
    Engine(model).generate([[1, 2]], SamplingParams(max_tokens=2, temperature=0))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_unsupported_models_fall_back_to_model_forward():
    model = make_model()
    handle = model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: o * 0)
    reason = InferenceRunner.unsupported_reason(model)
    assert reason is not None and "hooks" in reason
    assert Engine(model).runner is None
    with pytest.raises(ValueError, match="cannot run"):
        InferenceRunner(model)
    handle.remove()
    assert Engine(model).runner is not None
    assert Engine(model, fused_weights=False).runner is None


def test_lora_wrapped_projections_run_through_model_forward():
    """A LoRA wrapper exposes its base ``weight``; fusing that would drop the adapter."""
    from lmforge.peft.lora import LoraConfig, LoraLinear

    model = make_model()
    attn = model.model.layers[1].self_attn
    attn.v_proj = LoraLinear(attn.v_proj)
    attn.v_proj.add_adapter("default", LoraConfig(r=2, init="gaussian"))
    assert "LoraLinear" in InferenceRunner.unsupported_reason(model)
    assert Engine(model).runner is None


def test_wrapping_a_projection_after_the_engine_was_built_turns_the_runner_off():
    from lmforge.peft.lora import LoraConfig, LoraLinear

    model = make_model()
    engine = Engine(model)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=0)
    before = engine.generate([[4, 8, 15, 16]], params)[0]
    mlp = model.model.layers[0].mlp
    mlp.up_proj = LoraLinear(mlp.up_proj)
    mlp.up_proj.add_adapter("default", LoraConfig(r=2, init="gaussian"))
    after = engine.generate([[4, 8, 15, 16]], params)[0]
    assert engine.runner.sync() is False
    plain = Engine(model, fused_weights=False).generate([[4, 8, 15, 16]], params)[0]
    assert after.token_ids == plain.token_ids
    assert [lp.logprob for lp in after.logprobs] == [lp.logprob for lp in plain.logprobs]
    assert [lp.logprob for lp in after.logprobs] != [lp.logprob for lp in before.logprobs]


def test_fused_and_plain_engines_agree_on_tokens_and_logprobs():
    model = make_model(1, sliding_window=6)
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [5, 3], list(range(20, 41))]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=3)
    fused = Engine(model, block_size=4, max_num_batched_tokens=9).generate(prompts, params)
    plain = Engine(model, block_size=4, max_num_batched_tokens=9, fused_weights=False)
    for f, p in zip(fused, plain.generate(prompts, params)):
        assert f.token_ids == p.token_ids
        for lf, lp in zip(f.logprobs, p.logprobs):
            assert lf.logprob == pytest.approx(lp.logprob, abs=1e-5)
            assert [t for t, _ in lf.top] == [t for t, _ in lp.top]


@pytest.mark.parametrize("shape", [(1, 32), (5, 64), (3, 4, 16)])
def test_fused_rms_norm_is_bit_identical_to_the_module_in_fp32(shape):
    """The runner relies on this to keep greedy outputs identical to ``model.forward``."""
    from lmforge.infer.runner import _norm
    from lmforge.nn.norm import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(shape[-1], eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    x = 4 * torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(_norm(norm, x), norm(x))


def test_updates_that_bypass_version_counters_need_a_new_engine_or_refresh():
    """``p.data`` writes (and fused optimizers) leave ``_version`` alone: a new Engine, or
    ``refresh_weights()``, must still serve the current weights."""
    model = make_model(2)
    prompts, params = [[3, 1, 4, 1, 5]], SamplingParams(max_tokens=6, temperature=0, logprobs=0)
    engine = Engine(model, block_size=4)
    engine.generate(prompts, params)
    for p in model.parameters():
        p.data.copy_(torch.randn_like(p) * 0.5)  # no version bump
    plain = Engine(model, block_size=4, fused_weights=False).generate(prompts, params)[0]
    fresh = Engine(model, block_size=4).generate(prompts, params)[0]
    assert fresh.token_ids == plain.token_ids
    assert fresh.logprobs[0].logprob == pytest.approx(plain.logprobs[0].logprob, abs=1e-5)
    for p in model.parameters():
        p.data.mul_(-1)
    engine.refresh_weights()
    again = engine.generate(prompts, params)[0]
    plain = Engine(model, block_size=4, fused_weights=False).generate(prompts, params)[0]
    assert again.token_ids == plain.token_ids


def test_trainer_steps_bump_parameter_versions():
    """lmforge's Trainer makes fused-AdamW updates visible to version-keyed caches."""
    from lmforge.train.config import RunConfig
    from lmforge.train.loop import Trainer

    model = make_model(3)
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    batch = {"input_ids": ids, "labels": ids.clone()}
    config = RunConfig()
    config.log.progress = False
    trainer = Trainer(model, [batch], config)
    before = [p._version for p in model.parameters()]
    trainer.train_step([batch])
    assert all(p._version > v for p, v in zip(model.parameters(), before))


@pytest.mark.parametrize("scheme", ["int8", "int4", "int8-panels"])
def test_quantized_models_run_through_the_fused_runner_bit_exactly(scheme, monkeypatch):
    """q/k/v and gate/up of a quantised model are stacked (`concat_quantized`), o/down/head
    are the model's own quantised modules: logits equal ``model.forward``'s bit for bit, and
    the engine's greedy tokens equal a cache-free greedy loop over ``model.forward``. With
    int8 panels (AVX2 CPUs: fp32 activations where ``forward``'s several-row kernel rounds
    them to bf16) the logits are close instead, and follow in-place edits just the same."""
    from lmforge.models.quantize import quantize_model
    from lmforge.nn.panel_gemm import panel_gemm_preferred
    from lmforge.nn.quant import Int4Linear, Int8Linear

    panels = scheme == "int8-panels"
    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "1" if panels else "0")
    if panels and not panel_gemm_preferred():
        pytest.skip("no AVX2 + FMA: no int8 panels")
    scheme = scheme.removesuffix("-panels")
    model = quantize_model(make_model(4, qkv_bias=True), scheme, group_size=32)
    kind = Int8Linear if scheme == "int8" else Int4Linear

    def same(got, want):
        if panels:
            torch.testing.assert_close(got, want, rtol=0, atol=0.05 * float(want.abs().max()))
        else:
            assert torch.equal(got, want)

    assert type(model.model.layers[0].self_attn.q_proj) is kind
    runner = InferenceRunner(model)
    expected = paged_steps(model, model_call(model))
    for e, g in zip(expected, paged_steps(model, runner_call(runner))):
        same(g, e)
    assert (runner.layers[0].qkv.panels is not None) == panels
    assert type(runner.layers[0].qkv.module) is kind  # stacked, not run one by one
    assert runner.layers[0].o.module is model.model.layers[0].self_attn.o_proj  # no copy
    with torch.no_grad():  # in-place updates of stored tensors reach the bound kernels
        model.model.layers[1].self_attn.o_proj.weight_scale.mul_(-3)
        model.model.layers[0].self_attn.k_proj.weight_scale.mul_(2)
    expected = paged_steps(model, model_call(model))
    for e, g in zip(expected, paged_steps(model, runner_call(runner))):
        same(g, e)

    prompt, steps = [3, 14, 15, 92, 65], 8
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    engine = Engine(model, block_size=4)
    assert engine.runner is InferenceRunner.for_model(model)

    def no_forward(*args, **kwargs):
        raise AssertionError("the engine fell back to model.forward")

    monkeypatch.setattr(model, "forward", no_forward)  # the fused path must be taken
    params = SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True)
    assert engine.generate([prompt], params)[0].token_ids == ids[len(prompt) :]


def test_int8_rows_quantise_the_activations_of_several_rows_only_when_asked(monkeypatch):
    """``int8_rows`` (engines with the compiled decode step): the runner's int8 products of
    two rows or more go through fbgemm int8 × int8 over the layer's packed copy (activations
    quantised per row) — close to ``model.forward`` within that rounding, not equal — while
    one-row steps and the default (``int8_rows`` off, every default engine) stay bit-equal;
    the compiled step reuses the runner's packed copy instead of packing its own."""
    from lmforge.infer import int8_gemm
    from lmforge.infer.int8_gemm import int8_enabled
    from lmforge.models.quantize import quantize_model

    if not int8_enabled():
        pytest.skip("fbgemm int8 unavailable")
    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "0")  # int8 panels: fp32 activations, not bit-equal
    model = quantize_model(make_model(5), "int8")
    runner = InferenceRunner(model)
    expected = paged_steps(model, model_call(model))

    def call(ids, pos, batch, keep):
        assert runner.sync()
        return runner(ids, pos, int(pos.max()), batch, keep, False, True)

    got = paged_steps(model, call)
    assert not torch.equal(got[0], expected[0])  # a prefill of 13 rows: quantised
    # without VNNI fbgemm keeps 7 bits of each activation (reduce_range): twice the step
    tolerance = 0.1 if int8_gemm._has_vnni() else 0.2
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=tolerance * float(e.abs().max()))
    for e, g in zip(expected, paged_steps(model, runner_call(runner))):
        assert torch.equal(g, e)
    packed = runner.layers[0].qkv.int8_packed()
    assert packed is not None and runner.layers[0].qkv.int8_packed() is packed  # built once
    assert Engine(model)._int8_rows() is False
    assert Engine(model, compile_decode="eager")._int8_rows() is True


def test_one_row_goes_through_the_dense_op_and_several_through_onednn(monkeypatch):
    """Where both exist, a decode row is lmforge's dense op over the model's own weights and a
    multi-row input oneDNN's packed copy (a review had let the packed copy take one row too:
    the 30m default fp32 engine lost its GEMV speed-up)."""
    import lmforge.infer.runner as runner_module

    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "0")  # AVX2 CPUs: lmforge's panels take every row
    engine = Engine(make_model())
    engine.generate([[1, 2, 3]], SamplingParams(max_tokens=1, temperature=0))  # builds it
    proj = engine.runner.layers[0].qkv
    assert isinstance(proj, runner_module._DenseProjection)
    if proj.rows is None or proj.packed is None:
        pytest.skip("needs both lmforge's dense op and oneDNN packing")
    calls = {"dense": 0, "packed": 0}
    dense, packed = runner_module.dense_gemv_parts, runner_module.packed_linear

    def count(kind, fn):
        def wrapped(*args, **kwargs):
            calls[kind] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(runner_module, "dense_gemv_parts", count("dense", dense))
    monkeypatch.setattr(runner_module, "packed_linear", count("packed", packed))
    k = proj.rows[0].shape[1]
    one, two = proj(torch.randn(1, k)), proj(torch.randn(2, k))
    assert calls == {"dense": 1, "packed": 1} and one.shape[0] == 1 and two.shape[0] == 2
