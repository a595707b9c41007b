"""LoRA / rsLoRA / DoRA / PiSSA: two-way logits parity with `peft`, merge / unmerge,
named adapters, disabling, and which parameters train."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.peft import (
    apply_lora,
    disable_adapters,
    load_adapter,
    merge,
    merge_and_unload,
    save_adapter,
    set_adapter,
    trainable_parameters,
    unmerge,
)

CONFIGS = {
    "qv": dict(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    "all_lm_head_rslora": dict(
        r=4,
        alpha=6,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
            "lm_head",
        ],
        use_rslora=True,
    ),
    "dora": dict(
        r=3, alpha=5, target_modules=["q_proj", "k_proj", "o_proj", "down_proj"], use_dora=True
    ),
    "regex": dict(r=2, alpha=4, target_modules=r".*\.1\.mlp\.(gate|up)_proj"),
}
_PEFT_KEYS = dict(alpha="lora_alpha", dropout="lora_dropout")


def _peft_config(cfg: dict, **extra):
    from peft import LoraConfig

    kwargs = {_PEFT_KEYS.get(k, k): v for k, v in cfg.items()}
    return LoraConfig(task_type="CAUSAL_LM", **kwargs, **extra)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_lmforge_adapter_loads_in_peft(name, model_type, base_dir, randomize, ids, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = base_dir(model_type)
    model = apply_lora(lmforge.load_model(folder).eval(), **CONFIGS[name])
    randomize(model)
    save_adapter(model, tmp_path / "adapter")
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        ours, theirs = model(ids).logits, peft_model(ids).logits
    assert (ours - theirs).abs().max() < 1e-5
    with torch.no_grad(), disable_adapters(model), peft_model.disable_adapter():
        assert (model(ids).logits - peft_model(ids).logits).abs().max() < 1e-5
        assert (model(ids).logits - ours).abs().max() > 1e-2  # the adapter did something


@pytest.mark.parametrize("name", list(CONFIGS))
def test_peft_adapter_loads_in_lmforge(name, base_dir, hf_model_factory, ids, tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    folder = base_dir("llama")
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    peft_model = get_peft_model(hf, _peft_config(CONFIGS[name], init_lora_weights=False))
    with torch.no_grad():  # random A and B (and a perturbed DoRA magnitude)
        for pname, p in peft_model.named_parameters():
            if "lora_magnitude" in pname:
                p.add_(0.3 * torch.randn_like(p))
    peft_model.eval().save_pretrained(tmp_path / "adapter")
    model = load_adapter(lmforge.load_model(folder).eval(), tmp_path / "adapter")
    with torch.no_grad():
        ours = model(ids).logits
        assert (ours - peft_model(ids).logits).abs().max() < 1e-5
        with disable_adapters(model):
            assert (model(ids).logits - ours).abs().max() > 1e-2
    assert not trainable_parameters(model)  # loaded for inference


def test_pissa_roundtrip_with_peft(base_dir, randomize, ids, tmp_path):
    """PiSSA: the base weight becomes the SVD residual on both sides; the saved A/B replay."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = base_dir("llama")
    base = lmforge.load_model(folder).eval()
    with torch.no_grad():
        ref = base(ids).logits
    model = apply_lora(base, r=4, alpha=4, target_modules=["q_proj", "up_proj"], init="pissa")
    with torch.no_grad():  # PiSSA starts exactly at the base model
        assert (model(ids).logits - ref).abs().max() < 1e-4
    randomize(model, std=0.05)
    save_adapter(model, tmp_path / "a")
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "a").eval()
    again = load_adapter(lmforge.load_model(folder).eval(), tmp_path / "a")
    with torch.no_grad():
        ours = model(ids).logits
        assert (ours - peft_model(ids).logits).abs().max() < 1e-5
        assert (ours - again(ids).logits).abs().max() < 1e-5


@pytest.mark.parametrize("dora", [False, True])
def test_merge_unmerge_exact(dora, base_dir, randomize, ids):
    model = lmforge.load_model(base_dir("qwen2")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, r=4, alpha=8, target_modules="all-linear", use_dora=dora)
    randomize(model)
    with torch.no_grad():
        unmerged = model(ids).logits
        merge(model)
        assert (model(ids).logits - unmerged).abs().max() < 1e-5
        unmerge(model)
        assert (model(ids).logits - unmerged).abs().max() < 1e-5
    after = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()}
    for k, v in before.items():
        assert (after[k] - v).abs().max() < 1e-6, k
    plain = merge_and_unload(model)
    assert type(plain.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    with torch.no_grad():
        assert (plain(ids).logits - unmerged).abs().max() < 1e-5


def test_named_adapters_switch_and_disable(base_dir, randomize, ids, tmp_path):
    folder = base_dir("llama")
    model = lmforge.load_model(folder).eval()
    with torch.no_grad():
        base = model(ids).logits
    apply_lora(model, r=2, alpha=4, target_modules=["q_proj", "v_proj"], adapter_name="a")
    randomize(model, seed=1)
    apply_lora(model, r=3, alpha=3, target_modules=["o_proj", "v_proj"], adapter_name="b",
               use_dora=True)  # fmt: skip
    randomize(model, seed=2)  # only b is active (and trainable) now
    single = {}
    for name in ("a", "b"):
        set_adapter(model, name)
        assert all(f".{name}" in n for n in trainable_parameters(model))
        save_adapter(model, tmp_path / name)
        with torch.no_grad():
            single[name] = model(ids).logits
    assert (single["a"] - single["b"]).abs().max() > 1e-2
    for name in ("a", "b"):  # each adapter alone on a fresh base gives the same logits
        fresh = load_adapter(lmforge.load_model(folder).eval(), tmp_path / name)
        with torch.no_grad():
            assert (fresh(ids).logits - single[name]).abs().max() < 1e-5
    with torch.no_grad(), disable_adapters(model):
        assert torch.equal(model(ids).logits, base)
    with torch.no_grad():  # re-enabled after the block
        assert torch.equal(model(ids).logits, single["b"])
        merge(model)  # disabling a merged model unmerges it first
        with disable_adapters(model):
            assert (model(ids).logits - base).abs().max() < 1e-5


def test_only_adapter_parameters_train(base_dir, ids):
    from lmforge.train.optim import build_adamw

    model = apply_lora(lmforge.load_model(base_dir("llama")), r=4, target_modules="all-linear",
                       use_dora=True)  # fmt: skip
    trainable = trainable_parameters(model)
    assert trainable and all(".lora_" in n for n in trainable)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = build_adamw(model, lr=1e-2, fused=False)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in trainable.values())
    model(ids, labels=ids).loss.backward()
    opt.step()
    assert len(opt.state) == len(trainable)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_bad_targets_and_tied_lm_head(base_dir):
    model = lmforge.load_model(base_dir("llama"))
    with pytest.raises(ValueError, match="matched no linear layer"):
        apply_lora(model, target_modules=["qkv"])
    with pytest.raises(ValueError, match="only nn.Linear"):
        apply_lora(model, target_modules=["mlp"])
    tied = lmforge.CausalLM(lmforge.ModelConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                            tie_word_embeddings=True))  # fmt: skip
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        apply_lora(tied, target_modules=["lm_head"])
