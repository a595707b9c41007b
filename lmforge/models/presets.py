"""Named model sizes. Each is a Llama-family `ModelConfig`; pass overrides to change any field.

| preset | params (tied) | use |
|---|---|---|
| ``tiny`` | ≈0.1M | unit tests |
| ``demo`` | ≈0.9M | ``make demo`` on a laptop CPU |
| ``5m``   | ≈5.3M | benchmarks |
| ``30m``  | ≈31M | benchmarks |
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
}  # fmt: skip


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """`ModelConfig` for preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
