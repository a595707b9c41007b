"""lmforge/eval/flops.py: DeepSeek LLM's M = 72·n·d² + 6·n·d·l against a module-level count
of an lmforge model's matmul FLOPs (forward + backward, torch's FlopCounterMode)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmforge.eval.flops import compute_budget, config_flops_per_token, deepseek_flops_per_token
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM


def decoder_flops(config, seq_len: int) -> tuple[int, int]:
    """(dense matmul FLOPs, attention-core FLOPs) of the decoder layers for one training
    step (forward + backward) on one sequence; the attention core runs on the math backend
    (explicit bmm over the full l × l score matrix)."""
    torch.manual_seed(0)
    model = CausalLM(config)
    ids = torch.randint(0, config.vocab_size, (1, seq_len))
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(ids).logits.sum().backward()
    dense = attention = 0
    for name, counts in counter.get_flop_counts().items():
        if name.startswith("CausalLM.model.layers.") and name.count(".") == 3:
            for op, flops in counts.items():
                dense += flops if str(op) == "aten.mm" else 0
                attention += flops if str(op) == "aten.bmm" else 0
    return dense, attention


@pytest.mark.parametrize("n_layer,d_model,seq_len", [(2, 48, 32), (3, 24, 16)])
def test_formula_is_the_dense_matmuls_plus_the_causal_half_of_attention(n_layer, d_model, seq_len):
    """On the shapes the formula assumes (heads·head_dim = d, no KV grouping, SwiGLU width
    8d/3 = 8d² multiply-adds): dense FLOPs are 72·n·d² per token exactly, and the attention
    core (counted over the full square) is 2 × 6·n·d·l: the formula keeps the causal half."""
    config = preset_config("tiny", vocab_size=64, hidden_size=d_model, num_hidden_layers=n_layer,
                           intermediate_size=8 * d_model // 3, num_attention_heads=4,
                           num_key_value_heads=4, max_position_embeddings=64,
                           tie_word_embeddings=False)  # fmt: skip
    dense, attention = decoder_flops(config, seq_len)
    assert dense == 72 * n_layer * d_model**2 * seq_len
    assert attention == 2 * 6 * n_layer * d_model * seq_len**2
    assert deepseek_flops_per_token(n_layer, d_model, seq_len) * seq_len == dense + attention // 2
    assert config_flops_per_token(config, seq_len) == deepseek_flops_per_token(
        n_layer, d_model, seq_len
    )


def test_config_count_on_a_grouped_kv_preset():
    """The ``tiny`` preset (GQA 4/2 heads, d_ff = 2d): counted from its weights the same way."""
    config = preset_config("tiny", tie_word_embeddings=False)
    dense, attention = decoder_flops(config, 16)
    assert config_flops_per_token(config, 16) * 16 == dense + attention // 2
    assert config_flops_per_token(config, 16) != deepseek_flops_per_token(2, 64, 16)


def test_compute_budget_and_bad_arguments():
    assert compute_budget(1e6, 2e9) == 2e15
    with pytest.raises(ValueError, match="d_model=0"):
        deepseek_flops_per_token(2, 0, 8)
    with pytest.raises(ValueError, match="only dense models"):
        config_flops_per_token(preset_config("deepseek-tiny"), 8)
