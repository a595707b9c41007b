"""Inference: the engine (paged KV cache, continuous batching), sampling, beam search,
speculative decoding and grammar-constrained output.

>>> from lmforge.infer import Engine, SamplingParams
>>> engine = Engine(model, tokenizer)
>>> outs = engine.generate([tok.encode("Once upon a time")], SamplingParams(max_tokens=32))
"""

from lmforge.infer.beam import beam_search
from lmforge.infer.engine import Engine, RequestOutput, SamplingParams, TokenLogprob
from lmforge.infer.generate import generate
from lmforge.infer.sampling import (
    apply_temperature,
    apply_top_k,
    apply_top_p,
    process_logits,
    sample_next_token,
)
from lmforge.infer.speculative import ModelDrafter, SpeculativeOutput, speculative_generate
from lmforge.infer.structured import compile_constraint

__all__ = [
    "Engine",
    "ModelDrafter",
    "RequestOutput",
    "SamplingParams",
    "SpeculativeOutput",
    "TokenLogprob",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "beam_search",
    "compile_constraint",
    "generate",
    "process_logits",
    "sample_next_token",
    "speculative_generate",
]
