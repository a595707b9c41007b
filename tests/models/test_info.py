"""`checkpoint_dir` (the first check on every checkpoint folder) and `checkpoint_info`
(facts from config.json and safetensors headers, no tensor loaded)."""

from __future__ import annotations

import pytest
import torch

from lmforge.models.hf import CheckpointError, checkpoint_dir, save_model
from lmforge.models.info import attention_kind, checkpoint_info
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM


def test_checkpoint_dir_messages(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'}: no such directory"):
        checkpoint_dir(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        checkpoint_dir(tmp_path / "file")
    with pytest.raises(CheckpointError, match=r"not a checkpoint folder \(no config.json\)"):
        checkpoint_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert checkpoint_dir(str(tmp_path)) == tmp_path
    assert issubclass(CheckpointError, ValueError)


def test_checkpoint_info_reads_headers_only(tmp_path):
    torch.manual_seed(0)
    model = CausalLM(preset_config("tiny", vocab_size=128))
    save_model(model, tmp_path, dtype="bfloat16")
    info = checkpoint_info(tmp_path)
    c = model.config
    assert info["parameters"] == model.num_parameters() == c.num_parameters()
    assert info["dtype_on_disk"] == "bfloat16" and info["attention"] == "GQA"
    assert info["tokenizer"] is None and info["architectures"] == ["LlamaForCausalLM"]
    assert info["weights_bytes"]["bfloat16"] == 2 * c.num_parameters()


def test_attention_kind():
    assert attention_kind(preset_config("tiny", num_key_value_heads=4)) == "MHA"
    assert attention_kind(preset_config("tiny", num_key_value_heads=1)) == "MQA"
    assert attention_kind(preset_config("tiny", num_key_value_heads=2)) == "GQA"
