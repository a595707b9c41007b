"""Models: the transformer LM, its KV cache, and HF-format import/export."""

from lmforge.models.hf import CheckpointError, load_model, save_model
from lmforge.models.kv_cache import KVCache
from lmforge.models.transformer import CausalLM, CausalLMOutput

__all__ = ["CausalLM", "CausalLMOutput", "CheckpointError", "KVCache", "load_model", "save_model"]
