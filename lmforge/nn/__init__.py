"""Building blocks of the transformer: norms, rotary embeddings, attention, MLP."""

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
