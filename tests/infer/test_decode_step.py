"""The compiled decode step (`lmforge.infer.decode_step`): same tokens and log-probs as the
eager fused runner and as ``model.forward`` (GQA, padded batch and block-table buckets,
sliding windows, biases), fallbacks where it does not apply, and one real ``torch.compile``."""

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.infer.decode_step import CompiledDecode, bucket
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.models.quantize import quantize_model
from lmforge.models.transformer import CausalLM
from lmforge.nn.cpp_ops import cpp_ops_available, cpp_ops_unavailable_reason


def tiny(**overrides) -> CausalLM:
    cfg = dict(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return CausalLM(ModelConfig(**{**cfg, **overrides})).eval()


PROMPTS = [[(7 * j + 13 * i) % 90 + 3 for j in range(3 + 7 * i)] for i in range(3)]
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=0)


def assert_same(ref, out, atol=1e-5):
    for a, b in zip(ref, out):
        assert a.token_ids == b.token_ids
        lp = torch.tensor([x.logprob for x in a.logprobs])
        torch.testing.assert_close(
            torch.tensor([x.logprob for x in b.logprobs]), lp, atol=atol, rtol=0
        )


def test_bucket_is_next_power_of_two():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 17)] == [1, 2, 4, 4, 8, 8, 16, 32]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"sliding_window": 5}, {"qkv_bias": True, "o_bias": True}],
    ids=["gqa", "window", "bias"],
)
@pytest.mark.parametrize("attention", ["op", "inline"])
def test_eager_decode_step_equals_runner_and_forward(overrides, attention, monkeypatch):
    """3 sequences (batch bucket 4, one padding row), block size 4 (tables of 1–6 blocks,
    padded to 8): tokens equal, log-probs within float rounding — with the attention of
    several rows through lmforge's paged op (where it builds) and written inline."""
    if attention == "inline":
        monkeypatch.setattr(CompiledDecode, "_attention_op_runs", lambda self: False)
    elif not cpp_ops_available():
        pytest.skip(f"lmforge's C++ ops: {cpp_ops_unavailable_reason()}")
    model = tiny(**overrides)
    if overrides.get("qkv_bias"):
        with torch.no_grad():  # zero-init biases would hide a missing bias
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.5)
    ref = Engine(model, block_size=4).generate(PROMPTS, GREEDY)
    forward = Engine(model, block_size=4, fused_weights=False).generate(PROMPTS, GREEDY)
    engine = Engine(model, block_size=4, compile_decode="eager")
    out = engine.generate(PROMPTS, GREEDY)
    assert engine.compiled is not None
    assert {b for b, _ in engine.compiled.buckets} == {4}  # 3 rows + 1 padding row
    assert max(w for _, w in engine.compiled.buckets) == 8  # up to 29 tokens / 4 → 8 blocks
    assert_same(ref, out)
    assert_same(forward, out)
    assert engine.compiled._inputs(False)["attention_op"] == (attention == "op")
    assert engine.compiled._inputs(True)["attention_op"] == (attention == "op")


def test_padding_rows_do_not_touch_allocated_blocks():
    """Padding rows write only to the spare block; the sequences' K/V equal the runner's."""
    model = tiny()
    a = Engine(model, block_size=4, num_blocks=40)
    b = Engine(model, block_size=4, num_blocks=40, compile_decode="eager")
    for buf in (*a.cache.keys, *a.cache.values, *b.cache.keys, *b.cache.values):
        buf.zero_()  # never-allocated blocks hold whatever torch.empty gave
    a.generate(PROMPTS, GREEDY)
    b.generate(PROMPTS, GREEDY)
    used = 40 * 4
    for ka, kb in zip(a.cache.keys + a.cache.values, b.cache.keys + b.cache.values):
        torch.testing.assert_close(kb[:used], ka[:used], atol=1e-5, rtol=0)
    assert b.cache.keys[0].shape[0] == 41 * 4 and b.allocator.num_blocks == 40


def test_falls_back_where_it_does_not_apply():
    """int4 projections keep the eager runner (same tokens)."""
    model = quantize_model(tiny(intermediate_size=64), "int4", group_size=32)
    ref = Engine(model, block_size=4).generate(PROMPTS, GREEDY)
    engine = Engine(model, block_size=4, compile_decode="eager")
    assert_same(ref, engine.generate(PROMPTS, GREEDY), atol=0)
    assert engine.compiled is None
    engine = Engine(tiny(), fused_weights=False, compile_decode=True)
    assert engine.compile_decode is False  # no fused runner, nothing to compile
    with pytest.raises(ValueError, match="compile_decode"):
        Engine(tiny(), compile_decode="yes")


@pytest.mark.parametrize("row_products", [True, False], ids=["row-products", "gemm"])
def test_int8_and_mlp_bias_run_in_the_step(row_products):
    """Weight-only int8 and MLP biases, through one-row products or the runner's kernels:
    same greedy tokens as the eager runner, log-probs within float rounding (int8: within
    bf16 rounding, the eager kernel rounds its activations to bf16)."""
    for model, atol in ((quantize_model(tiny(), "int8"), 2e-2), (tiny(mlp_bias=True), 1e-5)):
        if atol < 1e-3:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith("bias"):
                        p.normal_(0, 0.5)
        ref = Engine(model, block_size=4).generate(PROMPTS, GREEDY)
        engine = Engine(model, block_size=4, compile_decode="eager")
        engine.generate(PROMPTS[:1], GREEDY)  # builds engine.compiled
        engine.compiled.row_products = row_products
        engine.compiled._inputs_for = None
        assert_same(ref, engine.generate(PROMPTS, GREEDY), atol=atol)
        one = engine.generate(PROMPTS[:1], GREEDY)  # batch bucket 1: the one-row path
        assert_same(ref[:1], one, atol=atol)
        assert 1 in {b for b, _ in engine.compiled.buckets}


@pytest.mark.parametrize("compile_", ["eager", pytest.param(True, marks=pytest.mark.slow)])
def test_one_row_int8_steps_through_lmforge_op(compile_):
    """Batch-1 int8 steps through lmforge's op (`lmforge.nn.int8_gemv`, where it builds):
    weight-only (``int8_gemm`` off) it gives the step's own row products within float
    rounding (both fp32: the same sums in another order) and ``model.forward``'s greedy
    tokens with log-probs within bf16 rounding (its int8 kernel rounds activations to bf16);
    int8 × int8 (``int8_gemm`` on, AVX-512 VNNI: the default there) the same tokens with
    log-probs within the activations' int8 rounding, as the multi-row int8 × int8 path."""
    from lmforge.nn.int8_gemv import (
        int8_gemv_available,
        int8_gemv_q8_supported,
        int8_gemv_unavailable_reason,
    )

    if not int8_gemv_available():
        pytest.skip(f"int8_gemv unavailable: {int8_gemv_unavailable_reason()}")
    if compile_ is True:
        pytest.importorskip("torch._inductor")
    model = quantize_model(tiny(), "int8")
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=0)
    forward = Engine(model, block_size=4, fused_weights=False).generate(PROMPTS[:1], params)
    modes = {"rows": (False, False), "gemv": (True, False)}  # (int8_gemv, int8_gemm)
    if int8_gemv_q8_supported():
        modes["gemv_q8"] = (True, True)
    outs = {}
    for kind, (gemv, gemm) in modes.items():
        engine = Engine(model, block_size=4, compile_decode=compile_)
        engine.generate(PROMPTS[:1], GREEDY)  # builds engine.compiled
        engine.compiled.int8_gemv, engine.compiled.int8_gemm = gemv, gemm
        engine.compiled._inputs_for = None
        outs[kind] = engine.generate(PROMPTS[:1], params)
        rows = engine.compiled._inputs(True)["layers"][0][1][0]
        assert (rows[0] if isinstance(rows[0], str) else "rows") == kind
        assert engine.compiled.buckets and {b for b, _ in engine.compiled.buckets} == {1}
    assert_same(forward, outs["gemv"], atol=2e-2)
    assert_same(outs["rows"], outs["gemv"], atol=1e-5)
    if "gemv_q8" in outs:
        assert_same(forward, outs["gemv_q8"], atol=5e-2)


def test_row_product_is_the_matrix_product():
    from lmforge.infer.decode_step import _row_product
    from lmforge.nn.quant import Int8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 24, bias=False)
    x = torch.randn(1, 48)
    torch.testing.assert_close(_row_product(x, lin.weight, None), lin(x), atol=1e-6, rtol=1e-5)
    q = Int8Linear.from_linear(lin)  # s ⊙ q, computed independently
    ref = x @ (q.weight.float() * q.weight_scale[:, None]).t()
    torch.testing.assert_close(_row_product(x, q.weight, q.weight_scale), ref)
    lin16 = lin.to(torch.bfloat16)  # bf16 weights and input: fp32 products and sums
    ref = (x.to(torch.bfloat16).float() @ lin16.weight.float().t()).to(torch.bfloat16)
    torch.testing.assert_close(_row_product(x.to(torch.bfloat16), lin16.weight, None), ref)


def test_unsupported_reason_names_the_cache_without_spare_block():
    model = tiny()
    engine = Engine(model, block_size=4)
    engine.runner.sync()
    assert "spare block" in CompiledDecode.unsupported_reason(engine.runner, engine.cache)
    with pytest.raises(ValueError, match="spare block"):
        CompiledDecode(engine.runner, engine.cache)


@pytest.mark.slow
def test_torch_compile_several_rows_use_the_packed_weights():
    """3 sequences (bucket 4): the compiled graph calls the runner's oneDNN-packed copies
    through `packed_linear_op` (on a torch with oneDNN; lmforge's panels on AVX2 CPUs) and lmforge's paged attention op
    (where it builds), same tokens as the eager runner."""
    pytest.importorskip("torch._inductor")
    model = tiny()
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=0)
    ref = Engine(model, block_size=4).generate(PROMPTS, params)
    engine = Engine(model, block_size=4, compile_decode=True)
    assert_same(ref, engine.generate(PROMPTS, params))
    assert {b for b, _ in engine.compiled.buckets} == {4}
    kernel = engine.compiled._inputs(False)["head"][1]
    head = engine.runner.head
    assert isinstance(kernel, tuple) == (head.packed is not None or head.panels is not None)
    assert engine.compiled._inputs(False)["attention_op"] == cpp_ops_available()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_torch_compile_matches_eager(kind):
    """One real inductor compilation (one bucket: one sequence, one block; ≈ 10 s of CPU
    with a C++ compiler, minutes on a loaded machine: slow): the one-row products, dense and
    int8, with their inputs stored."""
    pytest.importorskip("torch._inductor")
    model = tiny() if kind == "fp32" else quantize_model(tiny(), "int8")
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=0)
    ref = Engine(model).generate(PROMPTS[:1], params)
    engine = Engine(model, compile_decode=True)
    assert_same(ref, engine.generate(PROMPTS[:1], params), atol=1e-5 if kind == "fp32" else 2e-2)
    assert engine.compiled.buckets == {(1, 1)}


@pytest.mark.slow
def test_torch_compile_direct_calls_follow_weight_updates(monkeypatch):
    """After a bucket's first step through dynamo, later steps call its compiled graph
    directly (`_Direct`): the same tokens and log-probs as through dynamo, and after an
    in-place weight update (the runner rebuilds its copies) the step goes through dynamo
    once more and follows the new weights."""
    pytest.importorskip("torch._inductor")
    from lmforge.infer import decode_step

    direct_steps = []
    call = decode_step._Direct.__call__
    monkeypatch.setattr(
        decode_step._Direct, "__call__", lambda self, *a: direct_steps.append(1) or call(self, *a)
    )
    model = tiny()
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=0)
    engine = Engine(model, compile_decode=True)
    out = engine.generate(PROMPTS[:1], params)
    assert len(direct_steps) == 4 and len(engine.compiled._direct) == 1  # 5 decode steps
    assert_same(Engine(model).generate(PROMPTS[:1], params), out)
    monkeypatch.setattr(decode_step, "DIRECT_CALLS", False)
    through_dynamo = Engine(model, compile_decode=True)
    assert_same(through_dynamo.generate(PROMPTS[:1], params), out, atol=0)
    assert not through_dynamo.compiled._direct
    monkeypatch.setattr(decode_step, "DIRECT_CALLS", True)
    (before,) = engine.compiled._direct.values()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)
    changed = engine.generate(PROMPTS[:1], params)
    assert_same(Engine(model).generate(PROMPTS[:1], params), changed)
    assert changed[0].token_ids != out[0].token_ids
    (after,) = engine.compiled._direct.values()
    assert after is not before and len(direct_steps) == 8


def test_weights_quantised_mid_life_switch_back_to_the_runner(monkeypatch):
    """After the engine's model is quantised in place, its steps use the new weights: the
    same as the eager runner (weight-only int8 on both sides: bit-identical; without the
    runner's int8 panels, whose fp32 activations differ within rounding)."""
    monkeypatch.setenv("LMFORGE_INT8_GEMM", "0")
    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "0")
    model = tiny()
    engine = Engine(model, block_size=4, compile_decode="eager")
    engine.generate(PROMPTS, GREEDY)
    assert engine.compiled is not None
    quantize_model(model, "int8")
    engine.refresh_weights()
    ref = Engine(model, block_size=4).generate(PROMPTS, GREEDY)
    assert_same(ref, engine.generate(PROMPTS, GREEDY), atol=0)


def test_one_token_prefill_chunks_ride_along():
    """A 4-token budget splits prompts into chunks beside decoding rows: steps whose chunks
    are all single tokens, some not yet at their prompt's end (so not sampled), take the
    compiled path too, with the same result."""
    model = tiny()
    prompts = [[5, 6], [7, 8], [9, 10], list(range(3, 13))]  # the last one: 1 token per step
    ref = Engine(model, block_size=4, max_num_batched_tokens=4).generate(prompts, GREEDY)
    engine = Engine(model, block_size=4, max_num_batched_tokens=4, compile_decode="eager")
    forward, unsampled = engine._forward, []

    def spy(chunks):
        out = forward(chunks)
        if all(c.num_tokens == 1 for c in chunks):
            unsampled.append(len(chunks) - len(out[2]))
        return out

    engine._forward = spy
    assert_same(ref, engine.generate(prompts, GREEDY))
    assert engine.compiled is not None and max(unsampled) > 0


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("compile_", ["eager", True], ids=["eager", "inductor"])
def test_cuda_graph_replay_equals_forward(compile_):
    """On a GPU each bucket's step is a captured CUDA graph: same tokens and log-probs as
    ``model.forward``; the engine builds the fused runner for it (off by default on GPUs)."""
    model = tiny().cuda()
    forward = Engine(model, block_size=4, fused_weights=False).generate(PROMPTS, GREEDY)
    engine = Engine(model, block_size=4, compile_decode=compile_)
    assert engine.runner is not None
    out = engine.generate(PROMPTS, GREEDY)
    graphs = engine.compiled._graphs
    assert engine.compiled.cuda_graphs and {k[:2] for k in graphs} == engine.compiled.buckets
    assert_same(forward, out, atol=1e-4)
    again = engine.generate(PROMPTS, GREEDY)  # replays only: no new capture
    assert_same(forward, again, atol=1e-4)


@cuda
def test_cuda_graphs_recaptured_after_weights_change():
    """A graph bakes in the weight copies' addresses: when the runner rebuilds them, the
    graphs are captured again (else the replay would read freed memory)."""
    model = tiny().cuda()
    engine = Engine(model, block_size=4, compile_decode="eager")
    engine.generate(PROMPTS, GREEDY)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    engine.refresh_weights()
    ref = Engine(model, block_size=4, fused_weights=False).generate(PROMPTS, GREEDY)
    assert_same(ref, engine.generate(PROMPTS, GREEDY), atol=1e-4)


def test_cuda_graphs_need_a_cuda_cache():
    engine = Engine(tiny(), block_size=4, compile_decode="eager")
    engine.generate(PROMPTS[:1], GREEDY)
    with pytest.raises(ValueError, match="CUDA device"):
        CompiledDecode(engine.runner, engine.cache, compile=False, cuda_graphs=True)


@pytest.mark.skipif(not cpp_ops_available(), reason=f"{cpp_ops_unavailable_reason()}")
def test_one_row_bf16_steps_through_lmforge_dense_op():
    """A bf16 model's one-row products go through lmforge's dense op (`lmforge.nn.dense_gemv`:
    ``x`` rounded to bf16 as bf16 ``F.linear`` does, exact products, fp32 sums), with
    ``model.forward``'s greedy tokens and log-probs within bf16 rounding, and the step's own
    row products (``int8_gemv`` off turns lmforge's row ops off) within the same."""
    model = tiny().to(torch.bfloat16)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=0)
    forward = Engine(model, block_size=4, fused_weights=False).generate(PROMPTS[:1], params)
    outs = {}
    for kind in ("dense", "rows"):
        engine = Engine(model, block_size=4, compile_decode="eager")
        engine.generate(PROMPTS[:1], GREEDY)  # builds engine.compiled
        engine.compiled.int8_gemv = kind == "dense"
        engine.compiled._inputs_for = None
        outs[kind] = engine.generate(PROMPTS[:1], params)
        rows = engine.compiled._inputs(True)["layers"][0][1][0]
        assert (rows[0] if isinstance(rows[0], str) else "rows") == kind
    assert_same(forward, outs["dense"], atol=5e-2)
    assert_same(outs["rows"], outs["dense"], atol=5e-2)
