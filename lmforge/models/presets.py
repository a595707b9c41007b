"""Named model sizes: Llama-family `ModelConfig`s, and DeepSeek-V3 ones (multi-head latent
attention, DeepSeekMoE, one multi-token-prediction module); pass overrides to change any field.

| preset | params (tied) | use |
|---|---|---|
| ``tiny`` | ≈0.1M | unit tests |
| ``demo`` | ≈0.9M | ``make demo`` on a laptop CPU |
| ``5m``   | ≈5.3M | benchmarks |
| ``30m``  | ≈31M | benchmarks |
| ``deepseek-tiny`` | ≈0.13M | unit tests, ``recipes/pretrain-deepseek-tiny.yaml`` |
| ``deepseek-30m`` | ≈28M (≈15M active per token) | benchmarks |
"""

from __future__ import annotations

from typing import Any

from lmforge.config import ModelConfig

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True,
    ),
    "demo": dict(
        vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
    "5m": dict(
        vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
    "30m": dict(
        vocab_size=16384, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
    # DeepSeek-V3 shape, scaled down: q LoRA, a latent KV of kv_lora_rank, decoupled RoPE
    # key; one dense layer, then 8 (16) routed experts in 2 (4) groups + 1 shared expert.
    "deepseek-tiny": dict(
        model_type="deepseek_v3", vocab_size=256, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, rope_interleave=True,
        moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        n_group=2, topk_group=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
        max_position_embeddings=256, tie_word_embeddings=True,
    ),
    "deepseek-30m": dict(
        model_type="deepseek_v3", vocab_size=16384, hidden_size=384, intermediate_size=1024,
        num_hidden_layers=6, num_attention_heads=6, q_lora_rank=128, kv_lora_rank=96,
        qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=64, rope_interleave=True,
        moe_intermediate_size=192, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=2.5,
        max_position_embeddings=2048, tie_word_embeddings=True,
    ),
}  # fmt: skip


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """`ModelConfig` for preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
