"""Inference: batched generation with a KV cache, and the token sampler it uses."""

from lmforge.infer.generate import generate
from lmforge.infer.sampling import (
    apply_temperature,
    apply_top_k,
    apply_top_p,
    process_logits,
    sample_next_token,
)

__all__ = [
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "generate",
    "process_logits",
    "sample_next_token",
]
