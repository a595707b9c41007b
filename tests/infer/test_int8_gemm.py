"""Int8 × int8 linear layers (`lmforge.infer.int8_gemm`): fbgemm's product equals an
integer reference computed here (activations quantised by its rule, int64 products, fp64
rescale), normalised rows keep their own precision, the custom op works by handle
(eagerly and under ``torch.compile``, entries swapped), the environment turns it off, and
the compiled decode step uses it for steps of several rows with the weight-only tokens."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer import int8_gemm
from lmforge.infer.int8_gemm import (
    int8_enabled,
    int8_linear,
    int8_linear_op,
    int8_linear_rows,
    prepack_int8,
)
from lmforge.infer.packed_gemm import new_handles, register_packed
from lmforge.nn.quant import quantize_int8_per_channel

needs_int8 = pytest.mark.skipif(not int8_enabled(), reason="torch without fbgemm")
PROMPTS = [[(7 * j + 13 * i) % 90 + 3 for j in range(3 + 7 * i)] for i in range(3)]


def tiny_int8(seed: int = 0):
    from lmforge.config import ModelConfig
    from lmforge.models.quantize import quantize_model
    from lmforge.models.transformer import CausalLM

    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return quantize_model(CausalLM(cfg).eval(), "int8")


def layer(out: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, s = quantize_int8_per_channel(torch.randn(out, k, generator=g))
    return q, s, torch.randn(out, generator=g)


def reference_fbgemm(x, q, s, bias, reduce_range):
    """fbgemm's dynamic activation quantisation: one asymmetric uint8 range over the whole
    input (containing 0), zero point nudged to an integer (PyTorch's
    ``ChooseQuantizationParams``), q_x = round(x / s_x) + z; ``Σ (q_x − z) q_w`` in int64."""
    qmax = 127 if reduce_range else 255
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = torch.tensor((hi - lo) / qmax, dtype=torch.float32)
    from_min, from_max = -lo / scale, qmax - hi / scale
    err_min, err_max = abs(lo / scale), abs(qmax) + abs(hi / scale)
    zero = int(torch.round(from_min if err_min < err_max else from_max).clamp(0, qmax))
    q_x = (torch.round(x * (1.0 / scale)) + zero).clamp(0, qmax).long()
    acc = ((q_x - zero) @ q.long().t()).double()
    y = acc * scale.double() * s.double()
    return (y if bias is None else y + bias.double()).float()


@needs_int8
@pytest.mark.parametrize("rows", [1, 4, 16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_linear_equals_integer_reference(rows, with_bias):
    q, s, b = layer(96, 80, rows)
    b = b if with_bias else None
    x = torch.randn(rows, 80, generator=torch.Generator().manual_seed(2)) + 0.3
    want = reference_fbgemm(x, q, s, b, reduce_range=not int8_gemm._has_vnni())
    got = int8_linear(x, prepack_int8(q, s, b))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 * float(want.abs().max()))
    # and both are close to the weight-only product (only the activation was rounded)
    exact = x @ (q.float() * s[:, None]).t() + (0 if b is None else b)
    assert float((got - exact).norm() / exact.norm()) < 0.02


@needs_int8
def test_normalised_rows_are_quantised_apart():
    """`int8_linear_rows`: each row divided by its absmax, fbgemm's product on the result
    (checked against the integer reference above; here the rows span exactly ±1, where the
    zero point is a rounding tie that fbgemm and a float reference may break differently),
    rescaled; a row 1000× larger than the others leaves theirs as accurate as alone."""
    q, s, _ = layer(96, 80, 5)
    x = torch.randn(4, 80, generator=torch.Generator().manual_seed(3))
    x[0] *= 1000
    handle = new_handles(1)
    register_packed(handle, prepack_int8(q, s))
    r = x.abs().amax(-1, keepdim=True)
    want = int8_linear(x / r, prepack_int8(q, s)) * r
    got = int8_linear_rows(x, handle, 96)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 * float(want.abs().max()))
    exact = x @ (q.float() * s[:, None]).t()
    for i in range(4):
        assert float((got[i] - exact[i]).norm() / exact[i].norm()) < 0.02
    shared = int8_linear(x, prepack_int8(q, s))  # one range for all rows: small rows lost
    assert float((shared[1] - exact[1]).norm() / exact[1].norm()) > 0.1
    register_packed(handle, None)


@needs_int8
def test_op_reads_the_registered_weight_and_handles_swap():
    (q1, s1, b1), (q2, s2, _) = layer(48, 32, 1), layer(48, 32, 2)
    handle = new_handles(1)
    x = torch.randn(2, 32)
    register_packed(handle, prepack_int8(q1, s1, b1))
    torch.testing.assert_close(
        int8_linear_op(x, handle, 48), int8_linear(x, prepack_int8(q1, s1, b1))
    )
    register_packed(handle, prepack_int8(q2, s2, None))
    torch.testing.assert_close(int8_linear_op(x, handle, 48), int8_linear(x, prepack_int8(q2, s2)))
    torch.library.opcheck(
        torch.ops.lmforge.int8_linear.default,
        (x, handle, 48),
        test_utils=("test_schema", "test_faketensor"),
    )
    register_packed(handle, None)
    with pytest.raises(KeyError):
        int8_linear_op(x, handle, 48)


@needs_int8
@pytest.mark.slow
def test_torch_compile_runs_the_op_and_follows_the_handle():
    """Compiled: the op (its handle a graph constant) equals eager; a swapped registry entry
    is read without recompiling."""
    (q1, s1, b1), (q2, s2, b2) = layer(64, 48, 3), layer(64, 48, 4)
    handle = new_handles(1)
    register_packed(handle, prepack_int8(q1, s1, b1))

    def f(x):
        return torch.relu(int8_linear_op(x * 2, handle, 64)) + 1

    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(f, dynamic=False)
    x = torch.randn(4, 48)
    torch.testing.assert_close(compiled(x), f(x), rtol=1e-5, atol=1e-4)
    register_packed(handle, prepack_int8(q2, s2, b2))
    torch.testing.assert_close(compiled(x), f(x), rtol=1e-5, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1
    register_packed(handle, None)


def test_turned_off_by_the_environment_and_off_the_cpu(monkeypatch):
    assert not int8_enabled(torch.zeros(2, 2, device="meta"))
    monkeypatch.setenv("LMFORGE_INT8_GEMM", "0")
    assert not int8_enabled()
    assert not int8_enabled(torch.zeros(2, 2))


@needs_int8
@pytest.mark.parametrize("enabled", ["1", "0"])
def test_decode_step_uses_it_with_the_weight_only_tokens(monkeypatch, enabled):
    """int8 model: the decode step's steps of several rows use fbgemm by handle unless
    turned off (one row keeps the weight-only row products), with the greedy tokens of the
    eager (weight-only) engine and log-probs close to them."""
    import lmforge.infer.decode_step as decode_step
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams

    model = tiny_int8()
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=0)
    monkeypatch.setenv("LMFORGE_INT8_GEMM", "0")
    ref = Engine(model, block_size=4).generate(PROMPTS, params)
    monkeypatch.setenv("LMFORGE_INT8_GEMM", enabled)
    calls = []
    real = decode_step.int8_linear_rows
    spy = lambda x, *a: calls.append(x.shape[0]) or real(x, *a)  # noqa: E731
    monkeypatch.setattr(decode_step, "int8_linear_rows", spy)
    step = Engine(model, block_size=4, compile_decode="eager")
    out = step.generate(PROMPTS, params) + step.generate(PROMPTS[:1], params)  # buckets 4, 1
    for a, b in zip(ref + ref[:1], out):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(
            torch.tensor([t.logprob for t in b.logprobs]),
            torch.tensor([t.logprob for t in a.logprobs]),
            atol=5e-2,
            rtol=0,
        )
    assert step.compiled.int8_gemm == (enabled == "1")
    assert {b for b, _ in step.compiled.buckets} == {1, 4}
    assert set(calls) == ({4} if enabled == "1" else set())


@needs_int8
@pytest.mark.slow
def test_compiled_decode_step_runs_the_int8_kernels():
    """A real inductor compilation of the int8 decode step, a bucket of 4 (fbgemm by
    handle) and one row: the greedy tokens of the eager (weight-only) engine."""
    pytest.importorskip("torch._inductor")
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams

    model = tiny_int8()
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    ref = [o.token_ids for o in Engine(model, block_size=4).generate(PROMPTS, params)]
    engine = Engine(model, block_size=4, compile_decode=True)
    assert engine.compiled is None or engine.compiled.int8_gemm
    got = [o.token_ids for o in engine.generate(PROMPTS, params)]
    got += [o.token_ids for o in engine.generate(PROMPTS[:1], params)]
    assert got == ref + ref[:1]
    assert {b for b, _ in engine.compiled.buckets} >= {1, 4}


@needs_int8
def test_decode_step_repacks_after_the_weights_change():
    """Weights loaded in place: the runner rebuilds its copies and the step its packed one
    (same tokens as a fresh engine on the new weights)."""
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams

    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    model, other = tiny_int8(0), tiny_int8(1)
    engine = Engine(model, block_size=4, compile_decode="eager")
    before = [o.token_ids for o in engine.generate(PROMPTS, params)]
    with torch.no_grad():
        model.load_state_dict(other.state_dict())
    engine.refresh_weights()
    after = [o.token_ids for o in engine.generate(PROMPTS, params)]
    fresh = Engine(other, block_size=4, compile_decode="eager")
    assert after == [o.token_ids for o in fresh.generate(PROMPTS, params)] != before
