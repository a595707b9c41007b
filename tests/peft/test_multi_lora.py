"""Several LoRA adapters in one continuous batch: each request's tokens get only its own
adapter, so every answer equals that adapter run alone (here: merged into the weights)."""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
from lmforge.peft import apply_lora, merge_and_unload
from lmforge.peft.lora import lora_layers
from lmforge.peft.multi_lora import attach_router


def tiny_model() -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(preset_config("tiny", vocab_size=96, max_position_embeddings=128))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)
    return model.eval()


def with_adapters(model: CausalLM, names: list[str]) -> CausalLM:
    """``model`` plus one random LoRA per name (B ≠ 0, so each changes the outputs)."""
    for k, name in enumerate(names):
        targets = ("q_proj", "v_proj", "down_proj") if k % 2 == 0 else ("k_proj", "o_proj")
        apply_lora(model, r=4, alpha=8, target_modules=targets, adapter_name=name)
        gen = torch.Generator().manual_seed(100 + k)
        for layer in lora_layers(model).values():
            if name in layer.lora_B:
                for w in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                    w.data = torch.randn(w.shape, generator=gen) * 0.5
    return model


def merged_alone(base: CausalLM, names: list[str], keep: str) -> CausalLM:
    """The same adapter, merged into a copy of the base with no other adapter (the
    reference: "that adapter run alone")."""
    model = with_adapters(copy.deepcopy(base), names)
    for layer in lora_layers(model).values():
        layer.active = [keep] if keep in layer.lora_A else []
    return merge_and_unload(model).eval()


def test_routed_forward_equals_each_adapter_alone():
    names = ["alpha", "beta"]
    base = tiny_model()
    routed = with_adapters(copy.deepcopy(base), names)
    router = attach_router(routed, names)
    ids = torch.randint(0, 96, (3, 6), generator=torch.Generator().manual_seed(3))
    router.select(torch.tensor([[0] * 6, [1] * 6, [2] * 6]))  # row k: adapter k (0: base)
    with torch.no_grad():
        got = routed(ids).logits
    router.select(None)
    refs = [base] + [merged_alone(base, names, n) for n in names]
    for k, ref in enumerate(refs):
        with torch.no_grad():
            want = ref(ids[k : k + 1]).logits[0]
        torch.testing.assert_close(got[k], want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(routed(ids).logits, base(ids).logits)  # None: the base
    assert not torch.allclose(refs[1](ids).logits, refs[2](ids).logits)


def test_two_adapters_answer_differently_in_one_batch():
    names = ["alpha", "beta"]
    base = tiny_model()
    routed = with_adapters(copy.deepcopy(base), names)
    engine = Engine(routed, max_num_seqs=16, adapters=attach_router(routed, names))
    prompts = [[5, 17, 33, 2, 9], [40, 41, 42], [7] * 11]
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    ids = {}
    for p_i, prompt in enumerate(prompts):  # one batch: every prompt × (base, alpha, beta)
        for adapter in range(3):
            ids[p_i, adapter] = engine.add_request(prompt, params, adapter=adapter)
    outs = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                outs[out.request_id] = out.token_ids
    assert engine.num_steps == 10  # all nine decoded together (one prefill + 9 decodes)
    for adapter, ref in enumerate([base] + [merged_alone(base, names, n) for n in names]):
        alone = Engine(ref, max_num_seqs=8, fused_weights=False)
        want = [o.token_ids for o in alone.generate(prompts, params)]
        assert [outs[ids[p, adapter]] for p in range(3)] == want, adapter
    answers = {tuple(outs[ids[0, a]]) for a in range(3)}
    assert len(answers) == 3, "base, alpha and beta should answer the same prompt differently"


def test_router_refuses_bad_requests():
    names = ["alpha"]
    routed = with_adapters(tiny_model(), names)
    engine = Engine(routed, adapters=attach_router(routed, names))
    with pytest.raises(ValueError, match="adapter"):
        engine.add_request([1, 2], SamplingParams(max_tokens=2), adapter=2)
    with pytest.raises(ValueError, match="no LoRA layer"):
        attach_router(routed, ["gamma"])
    with pytest.raises(ValueError, match="no LoRA layers"):
        attach_router(tiny_model(), ["alpha"])


def test_prefix_cache_is_never_shared_across_adapters():
    """The base's cached K/V of a prompt must not serve the same prompt under an adapter."""
    names = ["alpha"]
    base = tiny_model()
    routed = with_adapters(copy.deepcopy(base), names)
    engine = Engine(routed, block_size=4, adapters=attach_router(routed, names))
    prompt = list(range(3, 23))  # five full blocks
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    first = engine.add_request(prompt, params, adapter=0)
    while engine.has_unfinished():
        engine.step()
    assert first not in engine.requests
    hits = engine.scheduler.prefix_hit_tokens
    engine.add_request(prompt, params, adapter=1)
    outs = []
    while engine.has_unfinished():
        outs += [o for o in engine.step() if o.finished]
    assert engine.scheduler.prefix_hit_tokens == hits  # no hit across adapters
    alone = Engine(merged_alone(base, names, "alpha"), block_size=4, fused_weights=False)
    assert outs[0].token_ids == alone.generate([prompt], params)[0].token_ids
    engine.add_request(prompt, params, adapter=1)  # the same adapter again: a hit
    while engine.has_unfinished():
        engine.step()
    assert engine.scheduler.prefix_hit_tokens > hits
