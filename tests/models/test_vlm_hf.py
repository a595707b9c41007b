"""Qwen2-VL's config.json ↔ `VLMConfig`: the nested (transformers ≥ 5) and the legacy flat
layout (text keys at the top, ``rope_scaling: {type: mrope}``) load to the same model; the
mapping round-trips; what it cannot honour is a `ConfigError` naming it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import lmforge
from lmforge.config import ConfigError
from lmforge.models.vlm_hf import vlm_config_from_hf, vlm_config_to_hf

NESTED = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "image_token_id": 60,
    "video_token_id": 61,
    "vision_start_token_id": 62,
    "vision_end_token_id": 63,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "qwen2_vl_text", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "max_position_embeddings": 128,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0, "mrope_section": [1, 1, 2]},
    },
    "vision_config": {
        "model_type": "qwen2_vl_vision", "depth": 1, "embed_dim": 16, "hidden_size": 32,
        "num_heads": 2, "mlp_ratio": 2, "patch_size": 4, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0},
    },
}  # fmt: skip


def legacy(nested: dict) -> dict:
    """The same model in the flat layout older Qwen2-VL checkpoints ship."""
    flat = {k: v for k, v in nested.items() if k != "text_config"}
    text = dict(nested["text_config"])
    rope = dict(text.pop("rope_parameters"))
    flat.update({k: v for k, v in text.items() if k != "model_type"})
    flat["rope_theta"] = rope.pop("rope_theta")
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    return flat


def test_nested_and_legacy_layouts_give_the_same_config():
    a = vlm_config_from_hf(NESTED)
    b = vlm_config_from_hf(legacy(NESTED))
    assert a.text == b.text and a.vision == b.vision
    assert a.mrope_section == b.mrope_section == [1, 1, 2]
    assert a.text.rope_theta == 5000.0 and a.image_token_id == 60
    again = vlm_config_from_hf(vlm_config_to_hf(a))
    assert again.text == a.text and again.vision == a.vision


def test_legacy_folder_loads_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = lmforge.models.vlm.VisionLanguageModel(vlm_config_from_hf(NESTED)).eval()
    lmforge.save_model(model, tmp_path / "nested")
    shutil.copytree(tmp_path / "nested", tmp_path / "flat")
    (tmp_path / "flat" / "config.json").write_text(json.dumps(legacy(NESTED)))
    ids = torch.tensor([[5, 60, 60, 7]])
    pv, grid = torch.randn(8, 96), torch.tensor([[1, 2, 4]])
    with torch.no_grad():
        logits = [
            lmforge.load_model(tmp_path / name)(
                input_ids=ids, pixel_values=pv, image_grid_thw=grid
            ).logits
            for name in ("nested", "flat")
        ]
    assert torch.equal(logits[0], logits[1])


def test_unsupported_fields_are_named():
    bad = json.loads(json.dumps(NESTED))
    bad["vision_config"]["fancy_norm"] = True
    with pytest.raises(ConfigError, match="fancy_norm"):
        vlm_config_from_hf(bad)
    bad = json.loads(json.dumps(NESTED))
    del bad["text_config"]["rope_parameters"]["mrope_section"]
    with pytest.raises(ConfigError, match="mrope_section"):
        vlm_config_from_hf(bad)
    bad = json.loads(json.dumps(NESTED))
    bad["text_config"]["rope_parameters"]["mrope_section"] = [1, 1, 1]
    with pytest.raises(ConfigError, match="mrope_section"):
        vlm_config_from_hf(bad)
