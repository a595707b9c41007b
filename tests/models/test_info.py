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


def test_check_weight_dtypes_names_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    from lmforge.models.info import check_weight_dtypes

    save_model(CausalLM(preset_config("tiny", vocab_size=64)), tmp_path, dtype="bfloat16")
    check_weight_dtypes(tmp_path)  # float weights pass
    state = load_file(tmp_path / "model.safetensors")
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.int8)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: tensor 'model.norm.weight' is int8"
    ):
        check_weight_dtypes(tmp_path)
    assert "int8" in checkpoint_info(tmp_path)["dtype_on_disk"]  # info still describes it


def test_adapter_info_matches_peft(tmp_path):
    """Method, rank, targets and the trainable count of a PEFT-written LoRA adapter, against
    peft's own count on the HF model; the recorded base is found and sized."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmforge.models.info import adapter_info, is_adapter_folder

    torch.manual_seed(0)
    save_model(CausalLM(preset_config("tiny", vocab_size=128)), tmp_path / "base")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True)
    peft_model = get_peft_model(hf, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert is_adapter_folder(tmp_path / "adapter") and not is_adapter_folder(tmp_path / "base")
    info = adapter_info(tmp_path / "adapter")
    assert info["peft_type"] == "LORA" and info["r"] == 4 and info["lora_alpha"] == 8
    assert info["use_rslora"] and info["target_modules"] == ["q_proj", "v_proj"]
    assert info["trainable_parameters"] == trainable
    assert info["base"]["found"] == str(tmp_path / "base")
    assert info["base"]["parameters"] + trainable == total
    with pytest.raises(CheckpointError, match="no such directory"):
        adapter_info(tmp_path / "nope")
