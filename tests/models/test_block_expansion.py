"""Block expansion (LLaMA Pro): the expanded model's logits equal the original's (an LM, and
a VLM with images and a pointer head), the new layers are copies with zeroed residual
outputs that still receive gradient, the folder loads in transformers with the original's
logits, and index-dependent layers are refused."""

from __future__ import annotations

import warnings

import pytest
import torch

from lmforge.config import ConfigError, ModelConfig
from lmforge.models.block_expansion import ZEROED, expand_blocks, expansion_plan
from lmforge.models.hf import save_model
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
from lmforge.models.vision_encoder import VisionConfig
from lmforge.models.vlm import VisionLanguageModel, VLMConfig


def random_lm(layers: int = 2) -> CausalLM:
    """A tiny LM whose every weight is random (o_proj / down_proj too, so a zero would show)."""
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=96, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = CausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def test_plan_inserts_a_copy_after_every_k_layers():
    assert expansion_plan(2, 1) == [0, None, 1, None]
    assert expansion_plan(4, 2) == [0, 1, None, 2, 3, None]
    assert expansion_plan(3, 2) == [0, 1, None, 2]
    with pytest.raises(ConfigError, match="every=0"):
        expansion_plan(2, 0)


def test_expanded_lm_computes_the_same_logits():
    model = random_lm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deeper = expand_blocks(model, every=1).eval()
    assert deeper.config.num_hidden_layers == 4 and len(deeper.model.layers) == 4
    ids = torch.randint(0, 96, (2, 11))
    torch.testing.assert_close(deeper(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    # the original is untouched; a copy equals its source except the zeroed outputs
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    for name, p in deeper.model.layers[1].named_parameters():
        source = dict(model.model.layers[0].named_parameters())[name]
        if name.startswith(ZEROED):
            assert not p.any()
        else:
            assert torch.equal(p, source) and p.data_ptr() != source.data_ptr()


def test_new_layers_get_gradient_and_then_change_the_output():
    model = random_lm()
    deeper = expand_blocks(model, every=1).train()
    ids = torch.randint(0, 96, (2, 9))
    deeper(ids, labels=ids).loss.backward()
    new = deeper.model.layers[3]
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0
    assert new.mlp.down_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        new.mlp.down_proj.weight.add_(0.1)
    assert not torch.allclose(deeper.eval()(ids).logits, model(ids).logits)


def test_expanded_vlm_with_pointer_head_keeps_logits_and_pointer():
    torch.manual_seed(0)
    text = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=256, qkv_bias=True)  # fmt: skip
    vision = VisionConfig(hidden_size=16, depth=1, num_heads=2, intermediate_size=32, patch_size=4,
                          spatial_merge_size=2, out_hidden_size=32)  # fmt: skip
    cfg = VLMConfig(text=text, vision=vision, image_token_id=60, vision_start_token_id=61,
                    vision_end_token_id=62, video_token_id=63, mrope_section=[1, 1, 2],
                    pointer_size=8)  # fmt: skip
    model = VisionLanguageModel(cfg).eval()
    deeper = expand_blocks(model, every=2).eval()
    assert deeper.config.text.num_hidden_layers == 3 and deeper.pointer_head is not None
    grid = torch.tensor([[1, 4, 4]])
    pixels = torch.randn(16, vision.in_channels * vision.temporal_patch_size * 16)
    ids = torch.tensor([[1, 61] + [60] * 4 + [62, 5, 7, 9]])
    a = model(ids, pixel_values=pixels, image_grid_thw=grid, output_hidden_states=True)
    b = deeper(ids, pixel_values=pixels, image_grid_thw=grid, output_hidden_states=True)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-6)
    keys = model.pointer_head.key(a.hidden_states[0, 2:6])
    torch.testing.assert_close(deeper.pointer_head.key(b.hidden_states[0, 2:6]), keys)


def test_saved_expansion_loads_in_transformers_with_the_original_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = random_lm()
    save_model(expand_blocks(model, every=1), tmp_path / "deeper")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "deeper").eval()
    assert hf.config.num_hidden_layers == 4
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_index_dependent_layers_are_refused():
    moe = CausalLM(preset_config("deepseek-tiny"))
    with pytest.raises(ConfigError, match="MoE"):
        expand_blocks(moe)
