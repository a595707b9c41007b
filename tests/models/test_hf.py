"""HF-format checkpoints: sharding, dtypes, tied weights, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmforge
from lmforge.models.hf import CheckpointError, read_state_dict
from lmforge.models.presets import preset_config


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return lmforge.CausalLM(preset_config("tiny", eos_token_id=1, bos_token_id=0)).eval()


def test_sharded_save_loads_in_lmforge_and_transformers(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    lmforge.save_model(tiny, tmp_path, max_shard_size="60KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == sum(
        v.numel() * v.element_size() for v in read_state_dict(tmp_path).values()
    )
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        ref = tiny(ids).logits
        assert torch.allclose(lmforge.load_model(tmp_path)(ids).logits, ref, atol=1e-5)
        hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert torch.allclose(hf(ids).logits, ref, atol=1e-5)
    # Re-saving unsharded removes the stale shards and index.
    lmforge.save_model(tiny, tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not any(p.name.startswith("model-") for p in tmp_path.iterdir())
    assert not (tmp_path / "model.safetensors.index.json").exists()


def test_tied_embeddings_are_saved_once(tiny, tmp_path):
    lmforge.save_model(tiny, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in tensors
    loaded = lmforge.load_model(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_config_and_generation_config_written(tiny, tmp_path):
    lmforge.save_model(tiny, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["dtype"] == "float32"
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 0, "eos_token_id": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_dtype_on_save_and_load(tiny, tmp_path):
    lmforge.save_model(tiny, tmp_path, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert lmforge.load_model(tmp_path).lm_head.weight.dtype == torch.bfloat16
    m = lmforge.load_model(tmp_path, dtype=torch.float32, device="cpu")
    assert m.lm_head.weight.dtype == torch.float32
    assert m.model.rotary_emb.inv_freq.dtype == torch.float32
    with pytest.raises(ValueError, match="unsupported dtype"):
        lmforge.load_model(tmp_path, dtype="float8")


def test_mismatched_checkpoint_lists_every_problem(tiny, tmp_path):
    lmforge.save_model(tiny, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.0.mlp.up_proj.weight"]
    del state["model.norm.weight"]
    state["model.layers.0.extra.weight"] = torch.zeros(2)
    state["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as info:
        lmforge.load_model(tmp_path)
    msg = str(info.value)
    for name in (
        "model.layers.0.mlp.up_proj.weight",
        "model.norm.weight",
        "model.layers.0.extra.weight",
        "model.layers.1.self_attn.q_proj.weight",
    ):
        assert name in msg
    assert str(tmp_path) in msg


def test_folder_errors(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="not a directory"):
        lmforge.load_model(tmp_path / "nope")
    lmforge.save_model(tiny, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        lmforge.load_model(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors"):
        lmforge.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{\n  oops\n}")
    with pytest.raises(lmforge.ConfigError, match=r"config.json:2"):
        lmforge.load_model(tmp_path)


def test_untied_checkpoint_loads_lm_head(tmp_path):
    torch.manual_seed(1)
    model = lmforge.CausalLM(preset_config("tiny", tie_word_embeddings=False))
    lmforge.save_model(model, tmp_path)
    loaded = lmforge.load_model(tmp_path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight


def test_deepseek_bf16_save_keeps_gate_and_correction_bias_fp32(tmp_path):
    """DeepSeek-V3 keeps the MoE gate and its correction bias in fp32 in every dtype; a
    loaded model (its non-saved expert_load buffer included) moves between devices/dtypes."""
    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config("deepseek-tiny"))
    with torch.no_grad():
        model.model.layers[1].mlp.gate.e_score_correction_bias.copy_(torch.linspace(-1, 1, 8))
    lmforge.save_model(model, tmp_path, dtype="bfloat16")
    state = load_file(tmp_path / "model.safetensors")
    assert state["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert state["model.layers.1.mlp.gate.weight"].dtype == torch.float32
    assert state["model.layers.1.mlp.experts.3.up_proj.weight"].dtype == torch.bfloat16
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [
        "DeepseekV3ForCausalLM"
    ]
    loaded = lmforge.load_model(tmp_path, dtype="bfloat16").to("cpu")
    moe = loaded.model.layers[1].mlp
    assert moe.gate.e_score_correction_bias.dtype == torch.float32
    assert torch.equal(moe.gate.e_score_correction_bias, torch.linspace(-1, 1, 8))
    assert moe.expert_load.device.type == "cpu" and moe.expert_load.sum() == 0
    loaded.to(torch.float32)
    with torch.no_grad():
        ids = torch.randint(0, 256, (1, 5))
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=0.1)
