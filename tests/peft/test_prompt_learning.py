"""Prefix tuning (with the MLP folded away), P-tuning v2, prompt tuning and bottleneck
adapters: logits parity with `peft` both ways, generation with a KV cache, training."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.peft import disable_adapters, load_adapter, save_adapter, trainable_parameters
from lmforge.peft.adapters import apply_adapters
from lmforge.peft.prefix import apply_prefix_tuning, fold_prefix
from lmforge.peft.prompt import apply_prompt_tuning


def _peft_load(folder, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    return PeftModel.from_pretrained(hf, adapter).eval()


@torch.no_grad()
def _check_cached_decoding(model, prompt, steps: int = 3):
    """Greedy decoding with a contiguous KV cache (the virtual tokens go in first) picks
    the argmax of a full recomputation at every step."""
    cache = lmforge.KVCache.for_model(model, 1, 40)
    seq = prompt
    logits = model(seq, cache=cache).logits[:, -1]
    for _ in range(steps):
        token = logits.argmax(-1, keepdim=True)
        full = model(seq).logits[:, -1]
        assert torch.equal(full.argmax(-1, keepdim=True), token)
        assert (full - logits).abs().max() < 1e-4
        seq = torch.cat([seq, token], dim=1)
        logits = model(token, cache=cache).logits[:, -1]


@pytest.mark.parametrize("projection", [True, False])
def test_prefix_tuning_to_peft(projection, base_dir, randomize, ids, tmp_path):
    folder = base_dir("qwen2")
    model = apply_prefix_tuning(lmforge.load_model(folder).eval(), 5, projection=projection,
                                encoder_hidden_size=24)  # fmt: skip
    randomize(model, std=0.5)
    with torch.no_grad():
        ours = model(ids).logits
        with disable_adapters(model):
            assert (model(ids).logits - ours).abs().max() > 1e-2
    save_adapter(model, tmp_path / "prefix")
    theirs = _peft_load(folder, tmp_path / "prefix")
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert ours.shape == (2, ids.shape[1], 97)
        assert (ours - theirs(ids).logits).abs().max() < 1e-5
        assert (model(ids, attention_mask=mask).logits - ours).abs().max() < 1e-5
        fold_prefix(model)  # inference form: no MLP, same logits
        assert not hasattr(model.peft_prefix.transform, "default")
        assert (model(ids).logits - ours).abs().max() < 1e-5


def test_peft_prefix_and_prompt_load_in_lmforge(base_dir, ids, tmp_path):
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = base_dir("llama")
    for name, cfg in {
        "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                     prefix_projection=True, encoder_hidden_size=12),
        "prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    }.items():  # fmt: skip
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
        torch.manual_seed(0)
        pm = get_peft_model(hf, cfg).eval()
        pm.save_pretrained(tmp_path / name)
        model = load_adapter(lmforge.load_model(folder).eval(), tmp_path / name)
        with torch.no_grad():
            theirs = pm(ids).logits[:, -ids.shape[1] :]  # peft keeps the virtual positions
            assert (model(ids).logits - theirs).abs().max() < 1e-5, name


def test_prompt_tuning_to_peft_and_generation(base_dir, randomize, ids, tmp_path):
    folder = base_dir("llama")
    model = apply_prompt_tuning(lmforge.load_model(folder).eval(), 4)
    randomize(model, std=1.0)
    save_adapter(model, tmp_path / "prompt")
    theirs = _peft_load(folder, tmp_path / "prompt")
    with torch.no_grad():
        ours = model(ids).logits
        assert ours.shape[1] == ids.shape[1]
        assert (ours - theirs(ids).logits[:, 4:]).abs().max() < 1e-5
    _check_cached_decoding(model, ids[:1])


def test_prefix_generation_matches_recompute(base_dir, randomize, ids):
    model = apply_prefix_tuning(lmforge.load_model(base_dir("llama")).eval(), 3)
    randomize(model, std=0.5)
    _check_cached_decoding(model, ids[:1])


def test_packed_batches_are_refused(base_dir, ids):
    model = apply_prefix_tuning(lmforge.load_model(base_dir("llama")), 2)
    with pytest.raises(ValueError, match="packed batches"):
        model(ids, document_ids=torch.zeros_like(ids))


@pytest.mark.parametrize("method", ["prefix", "prompt", "adapter"])
def test_training_updates_only_the_adapter(method, base_dir, ids, tmp_path):
    from lmforge.train.optim import build_adamw

    folder = base_dir("llama")
    model = lmforge.load_model(folder)
    apply = {"prefix": lambda m: apply_prefix_tuning(m, 3),
             "prompt": lambda m: apply_prompt_tuning(m, 3),
             "adapter": lambda m: apply_adapters(m, bottleneck=4)}[method]  # fmt: skip
    apply(model)
    names = set(trainable_parameters(model))
    assert names and all(n.startswith(("peft_", "model.layers")) for n in names)
    assert all("peft_" in n or ".adapter_" in n for n in names)
    opt = build_adamw(model, lr=1e-2, fused=False)
    with torch.no_grad():
        before = model(ids, labels=ids).loss
    for _ in range(5):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    with torch.no_grad():
        assert model(ids, labels=ids).loss < before
    assert len(opt.state) == len(names)
    save_adapter(model, tmp_path / method)
    again = load_adapter(lmforge.load_model(folder), tmp_path / method)
    with torch.no_grad():
        assert (again(ids).logits - model(ids).logits).abs().max() < 1e-5


def test_adapters_start_as_identity_and_cannot_merge(base_dir, ids):
    from lmforge.peft import merge

    model = lmforge.load_model(base_dir("llama")).eval()
    with torch.no_grad():
        base = model(ids).logits
        apply_adapters(model, bottleneck=4)
        assert torch.equal(model(ids).logits, base)
    with pytest.raises(ValueError, match="cannot merge"):
        merge(model)
