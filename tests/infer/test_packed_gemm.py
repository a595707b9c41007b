"""oneDNN pre-packed linear layers (`lmforge.infer.packed_gemm`): equal to ``F.linear`` up
to fp32 rounding at every row count, only where they apply, and used by the engine's runner
for multi-row inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.infer.packed_gemm import (
    new_handles,
    pack_weight,
    packed_linear,
    packed_linear_op,
    packing_enabled,
    register_packed,
)

needs_onednn = pytest.mark.skipif(
    not packing_enabled(torch.zeros(2, 2)), reason="torch built without oneDNN"
)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 17, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_linear_equals_f_linear(rows, with_bias):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 80, generator=g)
    b = torch.randn(96, generator=g) if with_bias else None
    x = torch.randn(rows, 80, generator=g)
    got = packed_linear(x, pack_weight(w), b)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    # a strided view of a wider tensor (the runner's column slices) gives the same
    wide = torch.randn(rows, 160, generator=g)
    torch.testing.assert_close(packed_linear(wide[:, ::2], pack_weight(w), b),
                               F.linear(wide[:, ::2], w, b), rtol=1e-5, atol=1e-5)  # fmt: skip


def test_packing_applies_only_to_fp32_cpu_and_can_be_turned_off(monkeypatch):
    assert not packing_enabled(torch.zeros(4, 4, dtype=torch.float64))
    assert not packing_enabled(torch.zeros(4, 4, dtype=torch.bfloat16))
    assert not packing_enabled(torch.zeros(4))
    monkeypatch.setenv("LMFORGE_PACKED_GEMM", "0")
    assert not packing_enabled(torch.zeros(4, 4))


@needs_onednn
def test_runner_uses_packed_weights_for_several_rows_and_matches_forward(monkeypatch):
    import lmforge.infer.runner as runner_module
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    monkeypatch.setenv("LMFORGE_PANEL_GEMM", "0")  # oneDNN's copy, not lmforge's panels
    calls = []
    real = runner_module.packed_linear
    monkeypatch.setattr(runner_module, "packed_linear",
                        lambda x, p, b: calls.append(x.shape[0]) or real(x, p, b))  # fmt: skip
    torch.manual_seed(0)
    model = CausalLM(preset_config("tiny", vocab_size=64)).eval()
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    got = [o.token_ids for o in Engine(model).generate(prompts, params)]
    assert calls and min(calls) >= 2  # prefill and the two-request decode steps
    want = []
    for p in prompts:  # greedy by the model's own forward, one token at a time
        ids = list(p)
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        want.append(ids[len(p) :])
    assert got == want
    monkeypatch.setenv("LMFORGE_PACKED_GEMM", "0")
    calls.clear()
    model2 = CausalLM(preset_config("tiny", vocab_size=64)).eval()
    model2.load_state_dict(model.state_dict())
    assert [o.token_ids for o in Engine(model2).generate(prompts, params)] == want
    assert not calls


@needs_onednn
def test_packed_linear_op_reads_the_weight_behind_its_handle():
    """The custom op (what compiled graphs call) computes x Wᵀ + b with whatever weight is
    registered under the handle now: swapping the entry changes the result, freeing it
    makes the call fail loudly."""
    torch.manual_seed(0)
    w, b, x = torch.randn(24, 16), torch.randn(24), torch.randn(3, 16)
    handle = new_handles(1)
    assert new_handles(1) == handle + 1  # consecutive, never reused
    register_packed(handle, pack_weight(w))
    torch.testing.assert_close(packed_linear_op(x, b, handle, 24), F.linear(x, w, b))
    register_packed(handle, pack_weight(2 * w))
    torch.testing.assert_close(packed_linear_op(x, None, handle, 24), F.linear(x, 2 * w))
    register_packed(handle, None)
    with pytest.raises(KeyError):
        packed_linear_op(x, None, handle, 24)
