"""Building blocks of the transformer: norms, rotary embeddings, attention, MLP, and
DeepSeek-V3's latent attention and mixture of experts.

| module | what |
|---|---|
| `norm` | `RMSNorm` |
| `rope` | rotary embeddings with linear, Llama-3 and YaRN scaling |
| `attention` | MHA / GQA / MQA self-attention: QK-norm, sliding windows, packed documents, KV caches |
| `flash_attention` | FlashAttention in readable PyTorch: tiled online-softmax forward, recomputing backward (causal, padding, varlen, GQA) |
| `flash_attention_triton` | the same FlashAttention as Triton kernels (forward and backward, causal, varlen, GQA); opt-in on a GPU |
| `mlp` | `SwiGLU` feed-forward block |
| `mla` | multi-head latent attention (DeepSeek-V2/V3): training and absorbed forms, latent cache |
| `moe` | DeepSeekMoE: shared + routed experts, group-limited sigmoid routing, correction bias |
| `fp8` | fine-grained FP8 linear layers (DeepSeek-V3): E4M3 with 1×128 / 128×128 scales, fp32 promotion, all three GEMMs |
| `quant` | weight-only int8 (per channel) / int4 (group-wise) linear layers on torch's CPU kernels (one int8 row: lmforge's op), int4 packing |
| `int8_gemv` | lmforge's one-row int8 product as a C++ op (8 accumulators, prefetch; AVX-512 or AVX2; int8 × int8 with VNNI or AVX2) |
| `dense_gemv` | lmforge's one-row fp32 / bf16 product as a C++ op (the eager runner's one-row products; bf16 by VDPBF16PS) |
| `panel_gemm` | lmforge's fp32 GEMM over weights packed into 16-wide panels as a C++ op, and its weight-only int8 twin over int8 panels (AVX2 + FMA: the engine's multi-row products on CPUs without AVX-512) |
| `decode_layer` | a decoder layer's work around its attention as two C++ ops (RMSNorm, q/k/v, RoPE; output projection, SwiGLU, residuals; fp32 panels, int8 panels or codes), and a whole decode step's layers with their K/V writes and paged attention as one (`decode_layers`): the eager engine's steps (int8 codes without panels: one-token steps) |
| `huge_pages` | a module's large weights moved into transparent huge pages (fewer TLB misses per decode step) |
| `cpp_ops` | lmforge's own C++ CPU ops (`torch.ops.lmforge_ext`; sources in `lmforge/nn/kernels/`), built on first use, never fatal |
"""

from lmforge.nn.attention import Attention, AttentionBatch
from lmforge.nn.mla import MultiHeadLatentAttention
from lmforge.nn.mlp import SwiGLU
from lmforge.nn.moe import DeepSeekMoE
from lmforge.nn.norm import RMSNorm
from lmforge.nn.rope import RotaryEmbedding, apply_rotary, rope_frequencies

__all__ = [
    "Attention",
    "AttentionBatch",
    "DeepSeekMoE",
    "MultiHeadLatentAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_rotary",
    "rope_frequencies",
]
