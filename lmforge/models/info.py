"""Facts about an HF checkpoint folder without loading a tensor: architecture, parameter
count, dtype on disk, weight files, memory for weights and KV cache, tokenizer.

    info = checkpoint_info("runs/demo/model")
    info["parameters"], info["dtype_on_disk"], info["kv_cache_bytes_per_1k_tokens"]
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open

from lmforge.config import ModelConfig
from lmforge.models.hf import checkpoint_dir, weight_files

SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def checkpoint_info(folder: str | os.PathLike) -> dict[str, Any]:
    """Facts about an HF checkpoint folder, read from its config and safetensors headers
    (no tensor is loaded)."""
    path = checkpoint_dir(folder)
    config = ModelConfig.from_pretrained(path)
    dtypes: dict[str, int] = {}
    files = []
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles have no __iter__
                tensor = f.get_slice(key)
                name = SAFETENSORS_DTYPES.get(tensor.get_dtype(), tensor.get_dtype())
                dtypes[name] = dtypes.get(name, 0) + math.prod(tensor.get_shape())
        files.append({"name": file.name, "bytes": file.stat().st_size})
    params = config.num_parameters()
    # K and V, per layer, per KV head, per head dimension, for 1000 tokens.
    kv_elements = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 1000
    return {
        "path": str(path),
        "model_type": config.model_type,
        "architectures": config.hf_extra.get("architectures") or [],
        "parameters": params,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "attention_heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "attention": attention_kind(config),
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "dtype_on_disk": ", ".join(sorted(dtypes, key=dtypes.get, reverse=True)),
        "weight_files": files,
        "weights_bytes": {"float32": 4 * params, "bfloat16": 2 * params},
        "kv_cache_bytes_per_1k_tokens": {"float32": 4 * kv_elements, "bfloat16": 2 * kv_elements},
        "tokenizer": _tokenizer_info(path),
    }


def attention_kind(config: ModelConfig) -> str:
    """``MHA`` (a key-value head per query head), ``MQA`` (one) or ``GQA`` (groups)."""
    if config.num_key_value_heads == config.num_attention_heads:
        return "MHA"
    return "MQA" if config.num_key_value_heads == 1 else "GQA"


def _tokenizer_info(path: Path) -> dict[str, Any] | None:
    if not (path / "tokenizer.json").is_file():
        return None
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    return {"vocab_size": tok.vocab_size, "chat_template": tok.chat_template is not None}
