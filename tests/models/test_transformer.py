"""The LM itself: the body and the head, initialisation, loss, inputs validation, and that
it learns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lmforge
from lmforge.models.presets import PRESETS, preset_config
from lmforge.models.transformer import lm_output


def test_presets_have_documented_sizes():
    sizes = {name: preset_config(name).num_parameters() for name in PRESETS}
    assert 4.5e6 < sizes["5m"] < 6e6 and 25e6 < sizes["30m"] < 35e6
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("7b")


def test_init_scheme():
    torch.manual_seed(0)
    cfg = preset_config("demo")
    model = lmforge.CausalLM(cfg)
    std = cfg.initializer_range
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(std, rel=0.1)
    expected = std / math.sqrt(2 * cfg.num_hidden_layers)
    assert layer.self_attn.o_proj.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert layer.mlp.down_proj.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert torch.all(layer.input_layernorm.weight == 1)
    # At init the model predicts near-uniformly: loss ≈ ln(V).
    ids = torch.randint(0, cfg.vocab_size, (4, 32))
    loss = model(ids, labels=ids).loss.item()
    assert abs(loss - math.log(cfg.vocab_size)) < 0.1


def test_loss_matches_manual_cross_entropy():
    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config("tiny"))
    ids = torch.randint(0, 256, (2, 10))
    labels = ids.clone()
    labels[0, :4] = -100
    out = model(ids, labels=labels)
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, 256), labels[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, manual)
    assert torch.allclose(model(ids, logits_to_keep=3).logits, out.logits[:, -3:], atol=1e-6)


def test_it_learns_a_pattern():
    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.arange(32).repeat(4, 1) % 17
    first = None
    for _ in range(40):
        loss = model(ids, labels=ids).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_input_validation():
    model = lmforge.CausalLM(preset_config("tiny"))
    ids = torch.randint(0, 256, (2, 8))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(ids, attention_mask=torch.ones(2, 7))
    with pytest.raises(ValueError, match="end at B\\*T"):
        model(ids, cu_seqlens=torch.tensor([0, 3, 8], dtype=torch.int32))
    with pytest.raises(ValueError, match="row boundary"):
        model(ids, cu_seqlens=torch.tensor([0, 3, 10, 16], dtype=torch.int32))
    with pytest.raises(ValueError, match="not both"):
        model(ids, document_ids=torch.zeros_like(ids), cu_seqlens=torch.tensor([0, 16]))


def test_packed_gradients_do_not_leak_across_documents():
    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config("tiny"))
    ids = torch.randint(0, 256, (1, 12))
    docs = torch.tensor([[0] * 5 + [1] * 7])
    emb = model.model.embed_tokens(ids).detach().requires_grad_(True)
    # Route through the model with a hook replacing the embedding output.
    handle = model.model.embed_tokens.register_forward_hook(lambda *_: emb)
    try:
        logits = model(ids, document_ids=docs).logits
    finally:
        handle.remove()
    logits[0, 5:].sum().backward()  # loss on the second document only
    assert torch.all(emb.grad[0, :5] == 0) and emb.grad[0, 5:].abs().sum() > 0


def test_body_returns_hidden_states_and_the_head_sits_on_top():
    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config("tiny")).eval()
    ids = torch.randint(0, 256, (2, 10))
    labels = ids.clone()
    labels[1, :3] = -100
    with torch.no_grad():
        hidden = model.model(ids)
        assert hidden.shape == (2, 10, model.config.hidden_size)
        out = model(ids, labels=labels)
        assert torch.equal(out.logits, model.lm_head(hidden))
        alone = lm_output(hidden, model.lm_head, labels, logits_to_keep=0)
        assert torch.equal(alone.loss, out.loss)
        chunked = lm_output(hidden, model.lm_head, labels, loss_chunk_size=4)
        assert chunked.logits is None and torch.allclose(chunked.loss, out.loss, atol=1e-6)
        kept = lm_output(hidden, model.lm_head, logits_to_keep=torch.tensor([0, 9]))
        assert torch.equal(kept.logits, out.logits[:, [0, 9]])


def test_inputs_embeds_equal_input_ids_packed_padded_and_cached():
    from lmforge.models.kv_cache import KVCache

    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config("tiny")).eval()
    ids = torch.randint(0, 256, (2, 10))
    embeds = model.model.embed_tokens(ids).detach()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    docs = torch.tensor([[0] * 4 + [1] * 6, [0] * 10])
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}, {"document_ids": docs}):
            ref = model(ids, **kwargs).logits
            assert torch.equal(model(inputs_embeds=embeds, **kwargs).logits, ref), kwargs
        cache = KVCache.for_model(model, 2, 10)
        first = model(inputs_embeds=embeds[:, :6], cache=cache).logits
        rest = model(ids[:, 6:], cache=cache).logits
        full = model(ids).logits
        assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-5)


def test_exactly_one_of_input_ids_and_inputs_embeds():
    model = lmforge.CausalLM(preset_config("tiny"))
    ids = torch.randint(0, 256, (1, 4))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(ids, inputs_embeds=model.model.embed_tokens(ids))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()
    with pytest.raises(ValueError, match=r"inputs_embeds must be \[B, T, H\]"):
        model(inputs_embeds=torch.zeros(4, model.config.hidden_size))


# ---------------------------------------------------------------------- DeepSeek-V3 shape
def _deepseek(**overrides):
    torch.manual_seed(0)
    return lmforge.CausalLM(preset_config("deepseek-tiny", **overrides))


def test_deepseek_balance_loss_is_added_in_training_and_load_is_counted():
    model = _deepseek(aux_loss_alpha=0.01).train()
    ids = torch.randint(0, 256, (2, 12))
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    main = F.cross_entropy(out.logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, main + out.aux_loss)
    summed = model(ids, labels=ids, loss_reduction="sum").loss  # ÷ 22 predicted tokens
    assert torch.allclose(summed / 22, main + out.aux_loss, atol=1e-5)
    moe = model.model.layers[1].mlp
    assert moe.expert_load.sum() == 2 * (2 * 12 * 2)  # two forwards, top-2
    assert model.model.layers[0].mlp.__class__.__name__ == "SwiGLU"  # first_k_dense_replace
    model.eval()
    assert model(ids, labels=ids).aux_loss is None


def test_deepseek_checkpointing_and_packing():
    model = _deepseek(num_nextn_predict_layers=1).train()
    ids = torch.randint(0, 256, (1, 14))
    docs = torch.tensor([[0] * 6 + [1] * 8])
    moe = model.model.layers[1].mlp
    model(ids, labels=ids, document_ids=docs).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    load = moe.expert_load.clone()
    model.zero_grad()
    moe.reset_load()
    model.model.gradient_checkpointing = 1
    model(ids, labels=ids, document_ids=docs).loss.backward()
    assert torch.equal(moe.expert_load, load)  # the recomputation is not counted again
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)
    model.eval()
    with torch.no_grad():  # packed = each document alone
        packed = model(ids, document_ids=docs).logits
        torch.testing.assert_close(packed[:, :6], model(ids[:, :6]).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[:, 6:], model(ids[:, 6:]).logits, atol=1e-5, rtol=1e-5)


def test_deepseek_lora_on_latent_projections_and_experts():
    from lmforge.models.kv_cache import KVCache
    from lmforge.peft import apply_lora, merge_and_unload

    model = _deepseek()
    targets = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
               "gate_proj", "up_proj", "down_proj"]  # fmt: skip
    apply_lora(model, r=4, alpha=8, target_modules=targets)
    wrapped = {n for n, m in model.named_modules() if type(m).__name__ == "LoraLinear"}
    assert "model.layers.1.self_attn.kv_b_proj" in wrapped
    assert "model.layers.1.mlp.experts.7.down_proj" in wrapped
    assert "model.layers.1.mlp.shared_experts.up_proj" in wrapped
    ids = torch.randint(0, 256, (2, 10))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        full = model(ids).logits
        # the absorbed (cached) form reads kv_b_proj through the adapter too
        cache = KVCache.for_model(model, 2, 10)
        steps = [model(ids[:, :6], cache=cache).logits]
        steps += [model(ids[:, i : i + 1], cache=cache).logits for i in range(6, 10)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
        merged = merge_and_unload(model)
        torch.testing.assert_close(merged(ids).logits, full, atol=1e-5, rtol=1e-5)
