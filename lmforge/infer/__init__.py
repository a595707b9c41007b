"""Inference: the engine (paged KV cache, continuous batching), sampling, beam search,
speculative decoding and grammar-constrained output.

>>> from lmforge.infer import Engine, SamplingParams
>>> engine = Engine(model, tokenizer)
>>> outs = engine.generate([tok.encode("Once upon a time")], SamplingParams(max_tokens=32))

| module | what |
|---|---|
| ``engine`` | `Engine`: requests in, tokens out; one scheduler step, one forward, sampling, stops |
| ``params`` | `SamplingParams`: the one sampling type (engine, server, speculative, rollouts) |
| ``request`` | a request's bookkeeping inside the engine; `RequestOutput`, `TokenLogprob` |
| ``detokenize`` | incremental detokenization, stop strings, what text may be streamed |
| ``scheduler`` | continuous batching: token budget, chunked prefill, preemption by recompute, one prefill for copies of a prompt |
| ``cache`` | paged KV cache: block allocator with prefix caching, storage, the ragged batch |
| ``runner`` | the engine's fused-weight forward pass over a paged batch |
| ``packed_gemm`` | linear layers with the weight pre-packed once for oneDNN (CPU GEMMs of a few rows without per-call re-packing) |
| ``int8_gemm`` | int8 × int8 linear layers (fbgemm, activations quantised per row on the fly) for multi-row CPU decode steps |
| ``paged_attention`` | decode attention reading the paged KV cache in place (a C++ op, `lmforge.nn.cpp_ops`; fp32, fp16 or bf16 K/V): the engine's decode rows, eager and compiled |
| ``decode_step`` | the engine's decode step as one function, `torch.compile`-d per shape bucket; paged attention reading the cache in place |
| ``multimodal`` | images in the engine: vision features once per request, M-RoPE positions, prefix keys with image hashes |
| ``sampling`` | logits processors (temperature, top-k, top-p, min-p, penalties) and the draw |
| ``checks`` | input checks, eos / pad ids, seeds and eval mode shared by every entry point |
| ``generate`` | `generate`: Hugging Face-style batched generation (greedy, sampling, beams) |
| ``greedy`` | greedy decoding of a left-padded batch through the engine |
| ``beam`` | `beam_search`: beam search token for token as ``transformers`` |
| ``speculative`` | `speculative_generate`: draft-and-verify decoding, exact in distribution |
| ``drafting`` | drafts and drafters: `Draft`, the `Drafter` protocol, `ModelDrafter` (a small LM with its own KV cache), the adaptive draft length |
| ``speculation`` | speculative decoding inside the engine: per-request drafts, verification, KV compaction, statistics |
| ``tree_attention`` | candidate trees: Medusa's sparse tree, tree attention mask, depth positions, exact tree verification |
| ``typical_acceptance`` | Medusa's typical acceptance p(x) > min(ε, δ·exp(−H(p))) — fast, not exact |
| ``self_drafters`` | self-speculative drafters: MTP chain, Medusa tree, EAGLE tree; `speculative_config` |
| ``speculative_batch`` | batched drafting: `propose_batch` runs the MTP, EAGLE and draft-model drafters of several requests in one forward per step |
| ``speculative_ragged`` | `RaggedKVCache`: per-request KV caches gathered into one padded batch and written back, for batched drafting |
| ``structured`` | `compile_constraint`: a request's grammar constraint (JSON Schema, regex, EBNF) |
| ``structured_spec`` | grammar specs checked and made canonical; strict JSON Schema closing |
| ``structured_backends`` | the llguidance and xgrammar engines and the compiled-grammar cache |
"""

from lmforge.infer.beam import beam_search
from lmforge.infer.drafting import ModelDrafter
from lmforge.infer.engine import Engine
from lmforge.infer.generate import generate
from lmforge.infer.multimodal import ImageInputs
from lmforge.infer.params import SamplingParams
from lmforge.infer.request import RequestOutput, TokenLogprob
from lmforge.infer.sampling import (
    apply_temperature,
    apply_top_k,
    apply_top_p,
    process_logits,
    processed_probs,
    sample_next_token,
)
from lmforge.infer.speculative import SpeculativeOutput, speculative_generate
from lmforge.infer.structured import compile_constraint

__all__ = [
    "Engine",
    "ImageInputs",
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
    "processed_probs",
    "sample_next_token",
    "speculative_generate",
]
