"""Building blocks of the transformer: norms, rotary embeddings, attention, MLP.

| module | what |
|---|---|
| `norm` | `RMSNorm` |
| `rope` | rotary embeddings with linear, Llama-3 and YaRN scaling |
| `attention` | MHA / GQA / MQA self-attention: QK-norm, sliding windows, packed documents, KV caches |
| `mlp` | `SwiGLU` feed-forward block |
"""

from lmforge.nn.attention import Attention, AttentionBatch
from lmforge.nn.mlp import SwiGLU
from lmforge.nn.norm import RMSNorm
from lmforge.nn.rope import RotaryEmbedding, apply_rotary, rope_frequencies

__all__ = [
    "Attention",
    "AttentionBatch",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_rotary",
    "rope_frequencies",
]
