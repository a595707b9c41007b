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


def test_quantized_checkpoint_passes_the_dtype_check_and_is_described(tmp_path):
    """A `lmforge convert --quantize` folder: its listed modules' integer weights pass the
    commands' dtype check (so generate/chat/serve accept it), an integer tensor anywhere
    else is still refused, and `checkpoint_info` reports the quantisation block."""
    from safetensors.torch import load_file, save_file

    from lmforge.models.info import check_weight_dtypes
    from lmforge.models.quantize import quantize_model

    model = CausalLM(preset_config("tiny", vocab_size=64))
    quantize_model(model, "int8")
    save_model(model, tmp_path)
    check_weight_dtypes(tmp_path)
    info = checkpoint_info(tmp_path)
    assert info["quantization"]["bits"] == 8
    assert "lm_head" in info["quantization"]["modules"]
    assert info["dtype_on_disk"].startswith("int8")
    state = load_file(tmp_path / "model.safetensors")
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.int8)  # not a listed module
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'model.norm.weight' is int8"):
        check_weight_dtypes(tmp_path)


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


def test_checkpoint_info_describes_mla_and_moe(tmp_path):
    """A deepseek-tiny folder: MLA's cached latent (KV bytes measured on the contiguous
    cache, which holds only the latent) and the experts, with the active parameters
    counted by running one token and summing the parameters of the experts that did not run."""
    from lmforge.models.kv_cache import KVCache

    torch.manual_seed(0)
    model = CausalLM(preset_config("deepseek-tiny", num_nextn_predict_layers=1)).eval()
    save_model(model, tmp_path)
    info = checkpoint_info(tmp_path)
    c = model.config
    assert info["parameters"] == model.num_parameters() == c.num_parameters()
    assert info["attention"] == "MLA, latent 32 + RoPE 8" and attention_kind(c) == "MLA"
    assert info["kv_heads"] == info["attention_heads"] == 4 and info["head_dim"] == 16 + 8
    mla = info["mla"]
    assert mla["cached_per_token_and_layer"] == 40 and mla["v_head_dim"] == 16
    assert mla["kv_cache_bytes_per_token_and_layer"] == {"float32": 160, "bfloat16": 80}
    cache = KVCache.for_model(model, batch_size=1, max_len=1000)
    measured = sum(t.nbytes for t in (*cache.keys, *cache.values))
    assert info["kv_cache_bytes_per_1k_tokens"] == {"float32": measured, "bfloat16": measured // 2}

    moe = info["moe"]
    assert (moe["routed_experts"], moe["shared_experts"], moe["experts_per_token"]) == (8, 1, 2)
    assert (moe["moe_layers"], moe["dense_layers"], moe["mtp_modules"]) == (1, 1, 1)
    ran = set()
    experts = [
        (name, module)
        for name, module in model.model.named_modules()
        if name.rsplit(".", 2)[-2:-1] == ["experts"]
    ]
    for name, module in experts:
        module.register_forward_hook(lambda m, i, o, name=name: ran.add(name))
    with torch.no_grad():
        model(torch.tensor([[5]]))
    assert len(ran) == 2  # top-2 of the one MoE layer's 8 routed experts
    idle = sum(p.numel() for name, m in experts if name not in ran for p in m.parameters())
    main = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp."))
    assert moe["active_parameters"] == main - idle
    assert moe["active_fraction"] == pytest.approx((main - idle) / model.num_parameters())
    assert checkpoint_info(_dense(tmp_path))["moe"] is None


def _dense(tmp_path):
    folder = tmp_path / "dense"
    save_model(CausalLM(preset_config("tiny", vocab_size=64)), folder)
    return folder


def test_active_parameters_of_deepseek_v3_match_the_paper():
    """DeepSeek-V3 (arXiv:2412.19437): 671B parameters, 37B activated per token; the MTP
    module is on top of the 671B (the HF release has 685B with its own embedding copy)."""
    import dataclasses

    from lmforge.config import ModelConfig
    from lmforge.models.info import active_parameters

    v3 = ModelConfig(
        model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, intermediate_size=18432,
        num_hidden_layers=61, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, moe_intermediate_size=2048,
        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8,
        topk_group=4, first_k_dense_replace=3, num_nextn_predict_layers=1,
        tie_word_embeddings=False,
    )  # fmt: skip
    main = dataclasses.replace(v3, num_nextn_predict_layers=0).num_parameters()
    assert 670.5e9 < main < 671.5e9
    assert 37e9 <= active_parameters(v3) < 38e9
    assert active_parameters(preset_config("tiny")) == preset_config("tiny").num_parameters()
