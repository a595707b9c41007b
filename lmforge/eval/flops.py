"""Compute accounting of DeepSeek LLM's scaling laws (DeepSeek-AI 2024, §3.2, eq. 2): the
model scale M is the non-embedding FLOPs per token of training (forward + backward),

    M = 72 · n_layer · d_model² + 6 · n_layer · d_model · l_seq,

and the compute budget C = M · D for D training tokens. What M counts, per layer and token:
2 FLOPs per multiply-add, × 3 for forward + backward, of (a) the dense matmuls: the
attention projections (4 d², Q K V O) and an MLP of 8 d² multiply-adds (4d-wide two-matrix,
or a SwiGLU of width 8d/3), 6 · 12 d² = 72 d²; and (b) the attention core, QKᵀ and AV over
the causal lower triangle, on average l/2 keys each: 6 · 2 · (l/2) · d = 6 d l. The
embedding and the output head are not counted (unlike 6N, Kaplan et al. 2020).
`config_flops_per_token` counts the same for any lmforge config (GQA, any MLP width).

    >>> deepseek_flops_per_token(n_layer=2, d_model=48, seq_len=32)
    350208
"""

from __future__ import annotations

from typing import Any

__all__ = ["compute_budget", "config_flops_per_token", "deepseek_flops_per_token"]


def deepseek_flops_per_token(n_layer: int, d_model: int, seq_len: int) -> int:
    """M = 72·n_layer·d_model² + 6·n_layer·d_model·l_seq (DeepSeek LLM, eq. 2)."""
    for name, value in (("n_layer", n_layer), ("d_model", d_model), ("seq_len", seq_len)):
        if value < 1:
            raise ValueError(f"{name}={value} must be ≥ 1")
    return 72 * n_layer * d_model**2 + 6 * n_layer * d_model * seq_len


def config_flops_per_token(config: Any, seq_len: int) -> int:
    """M for an lmforge dense ``ModelConfig``: 6 × the decoder layers' matmul weights (Q, K,
    V, O with grouped KV heads; gate, up, down of the SwiGLU MLP) + 6 · n_layer · d_attn ·
    l_seq for causal attention (d_attn = heads · head_dim). Equals
    `deepseek_flops_per_token` when d_attn = d_model, no KV grouping and d_ff = 8·d/3."""
    if getattr(config, "model_type", "llama") not in ("llama", "qwen2", "mistral"):
        raise ValueError(f"model_type={config.model_type!r}: only dense models are counted")
    d, hd = config.hidden_size, config.head_dim
    q_width, kv_width = config.num_attention_heads * hd, config.num_key_value_heads * hd
    attention = d * q_width + 2 * d * kv_width + q_width * d
    mlp = 3 * d * config.intermediate_size
    n = config.num_hidden_layers
    return 6 * n * (attention + mlp) + 6 * n * q_width * seq_len


def compute_budget(flops_per_token: float, tokens: float) -> float:
    """C = M · D (FLOPs), DeepSeek LLM's compute of training ``tokens`` at model scale M."""
    return float(flops_per_token) * float(tokens)
