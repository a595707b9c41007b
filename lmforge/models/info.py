"""Facts about an HF checkpoint folder without loading a tensor: architecture, parameter
count, dtype on disk, weight files, memory for weights and KV cache, tokenizer; and about a
PEFT adapter folder (method, rank, targets, trainable parameters, its base).

    info = checkpoint_info("runs/demo/model")
    info["parameters"], info["dtype_on_disk"], info["kv_cache_bytes_per_1k_tokens"]
    adapter_info("runs/sft-lora/model")["trainable_parameters"]
    check_weight_dtypes("ckpt/")   # CheckpointError naming an int32 tensor, before any load
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open

from lmforge.config import ConfigError, ModelConfig, from_hf_config_dict
from lmforge.io import read_json
from lmforge.models.hf import CheckpointError, checkpoint_dir, weight_files
from lmforge.models.hub import hub_id_of, resolve_model_path
from lmforge.models.quantize import (
    QuantizationConfig,
    quantization_config_of,
    without_quantization_config,
)
from lmforge.models.weights_check import SUPPORTED_DTYPES

SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
# The rest of safetensors' dtype codes, by torch's names (not loadable as model weights).
OTHER_DTYPES = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8",
                "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}  # fmt: skip
ADAPTER_CONFIG = "adapter_config.json"  # lmforge.peft.io.CONFIG_FILE (PEFT's name)
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def checkpoint_info(folder: str | os.PathLike) -> dict[str, Any]:
    """Facts about an HF checkpoint folder, read from its config and safetensors headers
    (no tensor is loaded)."""
    path = checkpoint_dir(folder)
    config, quant = model_config_and_quantization(path)
    dtypes: dict[str, int] = {}
    files = []
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles have no __iter__
                tensor = f.get_slice(key)
                name = dtype_name(tensor.get_dtype())
                dtypes[name] = dtypes.get(name, 0) + math.prod(tensor.get_shape())
        files.append({"name": file.name, "bytes": file.stat().st_size})
    params = config.num_parameters()
    kv_elements = kv_cache_elements_per_token(config) * 1000
    mla = config.use_mla
    return {
        "path": str(path),
        "model_type": config.model_type,
        "architectures": config.hf_extra.get("architectures") or [],
        "parameters": params,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "attention_heads": config.num_attention_heads,
        # MLA: every head has its own key and value, expanded from the shared latent.
        "kv_heads": config.num_attention_heads if mla else config.num_key_value_heads,
        "attention": attention_description(config),
        "head_dim": config.qk_nope_head_dim + config.qk_rope_head_dim if mla else config.head_dim,
        "mla": _mla_info(config),
        "moe": _moe_info(config),
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "dtype_on_disk": ", ".join(sorted(dtypes, key=dtypes.get, reverse=True)),
        "weight_files": files,
        "weights_bytes": {"float32": 4 * params, "bfloat16": 2 * params},
        "kv_cache_bytes_per_1k_tokens": {"float32": 4 * kv_elements, "bfloat16": 2 * kv_elements},
        "tokenizer": _tokenizer_info(path),
        "quantization": None if quant is None else quant.to_hf(),
    }


def model_config_and_quantization(
    folder: str | os.PathLike,
) -> tuple[ModelConfig, QuantizationConfig | None]:
    """A folder's model config and, for a weight-only quantised checkpoint
    (`lmforge.models.quantize`), its checked ``quantization_config`` block."""
    file = Path(folder) / "config.json"
    raw = read_json(file, "model config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a JSON object, got {type(raw).__name__}")
    quant = quantization_config_of(raw, str(file))
    return from_hf_config_dict(without_quantization_config(raw), source=str(file)), quant


def tensor_dtypes(file: str | os.PathLike) -> dict[str, str]:
    """Every tensor of one safetensors file → its dtype name, read from the header only."""
    with safe_open(str(file), framework="pt") as f:
        return {
            key: dtype_name(f.get_slice(key).get_dtype())
            for key in f.keys()  # noqa: SIM118 - safe_open handles have no __iter__
        }


def dtype_name(code: str) -> str:
    """A safetensors dtype code (``F32``, ``I32``…) by torch's name (``float32``, ``int32``)."""
    return SAFETENSORS_DTYPES.get(code) or OTHER_DTYPES.get(code, code)


def check_weight_dtypes(folder: str | os.PathLike) -> None:
    """`CheckpointError` naming the file, the first tensor and its dtype when a weight is
    of a dtype a model cannot hold (``lmforge.models.weights_check.SUPPORTED_DTYPES``, which
    `load_model` enforces too); reads headers only, so commands refuse a bad folder before
    any work."""
    allowed = [str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES]
    config_file = Path(checkpoint_dir(folder)) / "config.json"
    quant = None
    if config_file.is_file():
        raw = read_json(config_file, "model config")
        quant = quantization_config_of(raw, str(config_file)) if isinstance(raw, dict) else None
    # a quantised checkpoint's listed modules hold integer weights (int8, or uint8 for int4)
    int_weights = {} if quant is None else {f"{m}.weight": "int8" if quant.bits == 8 else "uint8"
                                            for m in quant.modules}  # fmt: skip
    for file in weight_files(folder):
        bad = {k: d for k, d in tensor_dtypes(file).items()
               if d not in allowed and int_weights.get(k) != d}  # fmt: skip
        if bad:
            name, dtype = next(iter(bad.items()))
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise CheckpointError(
                f"{file}: tensor {name!r} is {dtype}{more}; model weights must be one of "
                f"{', '.join(allowed)} (convert the checkpoint, e.g. with transformers)"
            )


def is_adapter_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a PEFT adapter (``adapter_config.json``)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_info(folder: str | os.PathLike) -> dict[str, Any]:
    """Facts about a PEFT adapter folder (lmforge's or PEFT's), from ``adapter_config.json``
    and the safetensors header: method, rank / α, target modules, trainable parameters,
    and the base model it records (with the base's size when that folder is found)."""
    path = Path(folder)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    cfg = read_json(path / ADAPTER_CONFIG, "adapter config")
    if not isinstance(cfg, dict) or "peft_type" not in cfg:
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: expected a JSON object with 'peft_type'")
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}")
    params = 0
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118
            params += math.prod(f.get_slice(key).get_shape())
    dtypes = sorted(set(tensor_dtypes(weights).values()))
    base = cfg.get("base_model_name_or_path")
    base_info = _base_info(base, path)
    method = cfg["peft_type"]
    if method == "LORA" and cfg.get("use_dora"):
        method = "LORA (DoRA)"
    targets = cfg.get("target_modules")
    return {
        "path": str(path),
        "kind": "adapter",
        "peft_type": cfg["peft_type"],
        "method": method,
        "r": cfg.get("r"),
        "lora_alpha": cfg.get("lora_alpha"),
        "use_rslora": bool(cfg.get("use_rslora", False)),
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "num_virtual_tokens": cfg.get("num_virtual_tokens"),
        "trainable_parameters": params,
        "dtype_on_disk": ", ".join(dtypes),
        "weights_bytes": weights.stat().st_size,
        "base_model_name_or_path": base,
        "base": base_info,
        "tokenizer": _tokenizer_info(path),
    }


def _base_info(base: Any, adapter: Path) -> dict[str, Any] | None:
    """The recorded base model, found (a local folder or a cached Hub id) or not."""
    if not isinstance(base, str) or not base:
        return None
    candidates = [Path(base)] if Path(base).is_absolute() else [Path(base), adapter / base]
    for candidate in candidates:
        try:
            folder = checkpoint_dir(resolve_model_path(candidate))
            config = ModelConfig.from_pretrained(folder)
        except ValueError:  # CheckpointError, ConfigError: not usable as the base
            continue
        return {"found": str(folder), "parameters": config.num_parameters(),
                "model_type": config.model_type, "hub_id": hub_id_of(folder)}  # fmt: skip
    return {"found": None}


def attention_kind(config: ModelConfig) -> str:
    """``MHA`` (a key-value head per query head), ``MQA`` (one), ``GQA`` (groups) or
    ``MLA`` (multi-head latent attention: per-head keys and values from one cached latent)."""
    if config.use_mla:
        return "MLA"
    if config.num_key_value_heads == config.num_attention_heads:
        return "MHA"
    return "MQA" if config.num_key_value_heads == 1 else "GQA"


def attention_description(config: ModelConfig) -> str:
    """`attention_kind`, plus what MLA caches: ``"MLA, latent 512 + RoPE 64"``."""
    kind = attention_kind(config)
    if config.use_mla:
        return f"{kind}, latent {config.kv_lora_rank} + RoPE {config.qk_rope_head_dim}"
    return kind


def kv_cache_elements_per_token(config: ModelConfig) -> int:
    """Numbers a KV cache holds per token, all layers: K and V of every KV head
    (2·L·H_kv·d), or for MLA the latent and the shared RoPE key once per layer
    (L·(kv_lora_rank + qk_rope_head_dim), DeepSeek-V2 §2.1.2 / Table 1)."""
    layers = config.num_hidden_layers
    if config.use_mla:
        return layers * (config.kv_lora_rank + config.qk_rope_head_dim)
    return 2 * layers * config.num_key_value_heads * config.head_dim


def active_parameters(config: ModelConfig) -> int:
    """Parameters one token's forward pass uses (DeepSeek-V3's "activated parameters"):
    everything but the multi-token-prediction modules (training only) and, in each MoE
    layer, the ``n_routed_experts − num_experts_per_tok`` routed experts it does not pick.
    Equals `ModelConfig.num_parameters` for a dense model without MTP."""
    main = dataclasses.replace(config, num_nextn_predict_layers=0).num_parameters()
    if not config.use_moe:
        return main
    moe_layers = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
    idle = config.n_routed_experts - config.num_experts_per_tok
    return main - moe_layers * idle * 3 * config.hidden_size * config.moe_intermediate_size


def _mla_info(config: ModelConfig) -> dict[str, Any] | None:
    if not config.use_mla:
        return None
    cached = config.kv_lora_rank + config.qk_rope_head_dim
    return {
        "kv_lora_rank": config.kv_lora_rank,
        "q_lora_rank": config.q_lora_rank,
        "qk_nope_head_dim": config.qk_nope_head_dim,
        "qk_rope_head_dim": config.qk_rope_head_dim,
        "v_head_dim": config.v_head_dim,
        "cached_per_token_and_layer": cached,
        "kv_cache_bytes_per_token_and_layer": {"float32": 4 * cached, "bfloat16": 2 * cached},
    }


def _moe_info(config: ModelConfig) -> dict[str, Any] | None:
    if not config.use_moe:
        return None
    moe_layers = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
    active = active_parameters(config)
    return {
        "routed_experts": config.n_routed_experts,
        "shared_experts": config.n_shared_experts,
        "experts_per_token": config.num_experts_per_tok,
        "expert_intermediate_size": config.moe_intermediate_size,
        "moe_layers": moe_layers,
        "dense_layers": config.num_hidden_layers - moe_layers,
        "mtp_modules": config.num_nextn_predict_layers,
        "active_parameters": active,
        "active_fraction": active / config.num_parameters(),
    }


def _tokenizer_info(path: Path) -> dict[str, Any] | None:
    if not (path / "tokenizer.json").is_file():
        return None
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    return {"vocab_size": tok.vocab_size, "chat_template": tok.chat_template is not None}
