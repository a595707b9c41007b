"""`lmforge info`: the text summary and the JSON facts of a checkpoint."""

from __future__ import annotations

import json

VOCAB = 320  # the checkpoint fixture's (conftest.py)


def test_info_text_summary(checkpoint, run):
    folder, model = checkpoint
    code, out, err = run("info", str(folder))
    assert code == 0, err
    assert f"{model.num_parameters():,}" in out
    assert "llama (LlamaForCausalLM)" in out
    assert "4 query / 2 key-value (GQA), head dim 16" in out
    assert "float32" in out and "model.safetensors" in out
    assert f"{VOCAB} ids, chat template: yes" in out


def test_info_json(checkpoint, run):
    folder, model = checkpoint
    code, out, _ = run("info", str(folder), "--json")
    assert code == 0
    info = json.loads(out)
    c = model.config
    assert info["parameters"] == model.num_parameters() == c.num_parameters()
    assert info["layers"] == c.num_hidden_layers and info["kv_heads"] == c.num_key_value_heads
    assert info["weights_bytes"] == {
        "float32": 4 * c.num_parameters(),
        "bfloat16": 2 * c.num_parameters(),
    }
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 1000
    assert info["kv_cache_bytes_per_1k_tokens"] == {"float32": 4 * kv, "bfloat16": 2 * kv}
    assert info["dtype_on_disk"] == "float32"
    assert [f["name"] for f in info["weight_files"]] == ["model.safetensors"]


def test_human_size_uses_decimal_prefixes():
    from lmforge.commands.info import human_size

    assert human_size(999) == "999 B"
    assert human_size(1234567) == "1.23 MB"
    assert human_size(2_500_000, unit="") == "2.50 M"


def test_info_on_an_adapter_folder(checkpoint, adapter, run):
    folder, model = checkpoint
    code, out, err = run("info", str(adapter))
    assert code == 0, err
    lora = sum(p.numel() for n, p in _lora_model(folder).named_parameters() if ".lora_" in n)
    assert "adapter" in out and "LORA" in out and "r=4, alpha=8" in out
    assert f"{lora:,}" in out and f"of the base's {model.num_parameters():,}" in out
    assert str(folder) in out
    code, out, _ = run("info", str(adapter), "--json")
    info = json.loads(out)
    assert code == 0 and info["trainable_parameters"] == lora and info["kind"] == "adapter"


def test_info_on_a_cached_hub_id(hf_cache, run):
    snapshot = hf_cache("Org/Tiny")
    code, out, err = run("info", "Org/Tiny")
    assert code == 0, err
    assert out.startswith(str(snapshot))
    code, _, err = run("info", "Org/Absent")
    assert code == 2 and "huggingface-cli download Org/Absent" in err


def _lora_model(folder):
    import lmforge
    from lmforge.peft import apply_lora

    return apply_lora(lmforge.load_model(folder), r=4, alpha=8, target_modules="all-linear")


def test_info_text_shows_moe_facts(tmp_path, run):
    import torch

    import lmforge
    from lmforge.models.info import active_parameters
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    torch.manual_seed(0)
    config = preset_config("deepseek-tiny")
    lmforge.save_model(CausalLM(config), tmp_path / "moe")
    code, out, err = run("info", str(tmp_path / "moe"))
    assert code == 0, err
    experts = f"{config.n_routed_experts} routed + {config.n_shared_experts} shared, "
    assert experts + f"top-{config.num_experts_per_tok}" in out
    active, total = active_parameters(config), config.num_parameters()
    assert active < total and f"{active:,} of {total:,} per token" in out
    layers = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
    assert f"{layers} MoE, {config.num_hidden_layers - layers} dense" in out
