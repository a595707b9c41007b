"""Models: the transformer (a body returning hidden states, heads on top), its KV cache, and
HF-format import/export.

| module | what |
|---|---|
| `transformer` | `TransformerModel` (body → hidden states), `lm_output`, `CausalLM` (body + LM head) |
| `loss` | next-token cross-entropy, whole or in chunks that never hold ``[B, T, V]`` |
| `kv_cache` | `KVCache`: a contiguous, preallocated cache for incremental decoding |
| `hf` | `load_model` / `save_model` (sharded safetensors, atomic), `checkpoint_dir` |
| `info` | `checkpoint_info`: a checkpoint's facts read from headers, no tensor loaded |
| `presets` | named sizes: ``tiny``, ``demo``, ``5m``, ``30m`` |
"""

from lmforge.models.hf import CheckpointError, load_model, save_model
from lmforge.models.kv_cache import KVCache
from lmforge.models.transformer import CausalLM, CausalLMOutput

__all__ = ["CausalLM", "CausalLMOutput", "CheckpointError", "KVCache", "load_model", "save_model"]
