"""Models: the transformer (a body returning hidden states, heads on top), its KV cache, and
HF-format import/export.

| module | what |
|---|---|
| `transformer` | `TransformerModel` (body → hidden states), `lm_output`, `CausalLM` (body + LM head) |
| `loss` | next-token cross-entropy, whole or in chunks that never hold ``[B, T, V]`` |
| `kv_cache` | `KVCache`: a contiguous, preallocated cache for incremental decoding |
| `hf` | `load_model` / `save_model` (sharded safetensors, atomic), `checkpoint_dir` |
| `info` | `checkpoint_info` / `adapter_info`: a checkpoint's or an adapter's facts read from headers, no tensor loaded |
| `hub` | Hub ids (``Org/Name``) resolved through the local Hugging Face cache, never downloaded |
| `weights_check` | reads weights with checks: damaged files, unsupported dtypes, NaN/inf tensors named |
| `mtp` | multi-token prediction (DeepSeek-V3): D sequential modules sharing embedding and head, their loss |
| `medusa` | Medusa heads (residual block + vocabulary projection from ``lm_head``), their losses, save / load |
| `eagle` | EAGLE drafter layer over [token embedding ; target feature], its loss, save / load |
| `block_expansion` | block expansion (LLaMA Pro): identity-initialised copies of decoder layers, a deeper model with the same outputs |
| `quantize` | weight-only quantisation of a whole `CausalLM` (int8 / int4), its checkpoint format, dequantisation |
| `average` | weight averaging of models fine-tuned from one start: a model soup, interpolation or extrapolation from the start |
| `presets` | named sizes: ``tiny``, ``demo``, ``5m``, ``30m``, ``deepseek-tiny``, ``deepseek-30m`` |
| `pointer_head` | GUI-Actor pointer head: a click as attention of a query token over the image tokens, its target, loss and readout |
| `glyph_head` | dense glyph (OCR) head: each image token's characters as ordered slots, its loss and accuracy |
| `vision_encoder` | native-resolution ViT: packed images, block-diagonal attention, 2-D RoPE, MoonViT position grid, 2×2 merger |
| `vlm` | `VisionLanguageModel`: image tokens into any LM body, M-RoPE or 1-D positions, `generate` (Qwen2-VL, Kimi-VL) |
| `vlm_hf` | Qwen2-VL's ``config.json`` ↔ `VLMConfig` and its tensor names (``qwen2_vl`` load / save) |
"""

from lmforge.models.hf import CheckpointError, load_model, save_model
from lmforge.models.kv_cache import KVCache
from lmforge.models.transformer import CausalLM, CausalLMOutput

__all__ = ["CausalLM", "CausalLMOutput", "CheckpointError", "KVCache", "load_model", "save_model"]
