"""Qwen2-VL's Hugging Face format for `VisionLanguageModel`: ``config.json`` ↔ `VLMConfig`,
and the two tensor names that differ.

A ``qwen2_vl`` config holds the language model in ``text_config`` (transformers ≥ 5; older
checkpoints keep its keys at the top level with ``rope_scaling: {type: mrope, …}``), the
encoder in ``vision_config`` (``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``,
``patch_size``, ``temporal_patch_size``, ``spatial_merge_size``, ``hidden_size`` = the LM
width) and the special token ids at the top level. The text part is an ordinary ``qwen2``
`ModelConfig` plus ``mrope_section``. Tensor names are identical except the patch
embedding, a ``Conv3d`` weight ``[D, C, T, P, P]`` in both, is applied as one matmul here
(`lmforge.models.vision_encoder.PatchEmbedding`); transformers' in-memory names
(``model.language_model.*``, ``model.visual.*``) are accepted too.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from lmforge.config import ConfigError, from_hf_config_dict, to_hf_config_dict
from lmforge.models.vision_encoder import VisionConfig
from lmforge.models.vlm import VLMConfig

VLM_MODEL_TYPES = ("qwen2_vl",)
VLM_ARCHITECTURE = "Qwen2VLForConditionalGeneration"
PATCH_WEIGHT = "visual.patch_embed.proj.weight"
_TOP_KEYS = {"image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
             "vision_config", "text_config", "model_type", "architectures", "tie_word_embeddings",
             "transformers_version", "dtype", "torch_dtype", "_name_or_path", "use_cache",
             "pointer_head"}  # fmt: skip
_VISION_KEYS = {"depth", "embed_dim", "hidden_size", "hidden_act", "mlp_ratio", "num_heads",
                "in_channels", "patch_size", "spatial_merge_size", "temporal_patch_size",
                "initializer_range", "rope_parameters", "model_type", "dtype", "torch_dtype",
                "in_chans", "spatial_patch_size", "transformers_version"}  # fmt: skip


def vision_config_from_hf(data: dict[str, Any], source: str) -> VisionConfig:
    """Qwen2-VL's ``vision_config`` as a `VisionConfig` (patches in merge-block order,
    fused qkv, no patch bias, LayerNorm ε = 1e-6)."""
    unknown = sorted(set(data) - _VISION_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unsupported vision_config fields {unknown}")
    rope = data.get("rope_parameters") or {}
    if rope.get("rope_type", "axial") != "axial":
        raise ConfigError(f"{source}: vision_config.rope_parameters.rope_type must be 'axial'")
    embed = data.get("embed_dim", 1280)
    try:
        return VisionConfig(
            hidden_size=embed,
            depth=data.get("depth", 32),
            num_heads=data.get("num_heads", 16),
            intermediate_size=int(embed * data.get("mlp_ratio", 4)),
            hidden_act=data.get("hidden_act", "quick_gelu"),
            in_channels=data.get("in_channels", data.get("in_chans", 3)),
            patch_size=data.get("patch_size", data.get("spatial_patch_size", 14)),
            temporal_patch_size=data.get("temporal_patch_size", 2),
            spatial_merge_size=data.get("spatial_merge_size", 2),
            out_hidden_size=data.get("hidden_size", 3584),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            initializer_range=data.get("initializer_range", 0.02),
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: vision_config: {exc}") from None


def vlm_config_from_hf(data: dict[str, Any], source: str = "config.json") -> VLMConfig:
    """Map a ``qwen2_vl`` ``config.json`` dict to a `VLMConfig` (`ConfigError` naming the
    fields it cannot honour)."""
    data = copy.deepcopy(data)
    if data.get("model_type") not in VLM_MODEL_TYPES:
        raise ConfigError(f"{source}: model_type={data.get('model_type')!r} is not a VLM type")
    legacy = data.get("text_config") is None
    text = {k: v for k, v in data.items() if k not in _TOP_KEYS} if legacy else data["text_config"]
    text = dict(text)
    text_type = text.pop("model_type", "qwen2_vl_text")
    rope_key = "rope_parameters" if text.get("rope_parameters") is not None else "rope_scaling"
    rope = dict(text.get(rope_key) or {})
    section = rope.pop("mrope_section", None)
    if rope.get("rope_type", rope.get("type")) == "mrope":
        rope.pop("type", None)
        rope["rope_type"] = "default"
    if rope_key == "rope_scaling" and rope == {"rope_type": "default"}:
        rope = {}  # M-RoPE over default frequencies: plain defaults once the sections are out
    text[rope_key] = rope or None
    if section is None:
        raise ConfigError(f"{source}: the text rope parameters have no mrope_section")
    for key in ("architectures", "dtype", "torch_dtype", "transformers_version"):
        text.pop(key, None)
    text["model_type"] = "qwen2"
    if "tie_word_embeddings" in data:
        text["tie_word_embeddings"] = data["tie_word_embeddings"]
    text_cfg = from_hf_config_dict(text, f"{source} (text_config)")
    vision = vision_config_from_hf(dict(data.get("vision_config") or {}), source)
    extra = {k: data[k] for k in ("transformers_version", "dtype", "torch_dtype") if k in data}
    extra["legacy"] = legacy
    extra["text_model_type"] = text_type
    try:
        return VLMConfig(
            text=text_cfg,
            vision=vision,
            image_token_id=data.get("image_token_id", 151655),
            vision_start_token_id=data.get("vision_start_token_id", 151652),
            vision_end_token_id=data.get("vision_end_token_id", 151653),
            video_token_id=data.get("video_token_id", 151656),
            positions="mrope",
            mrope_section=list(section),
            model_type=data["model_type"],
            pointer_size=int((data.get("pointer_head") or {}).get("size", 0)),
            hf_extra=extra,
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def vlm_config_to_hf(cfg: VLMConfig) -> dict[str, Any]:
    """The ``config.json`` dict `transformers`' ``Qwen2VLForConditionalGeneration`` loads
    (the nested transformers-5 layout)."""
    if cfg.model_type not in VLM_MODEL_TYPES or cfg.positions != "mrope":
        raise ConfigError(
            f"cannot write model_type={cfg.model_type!r} with positions={cfg.positions!r} as an HF "
            "checkpoint: only qwen2_vl (M-RoPE, Qwen2 text model, Qwen2-VL encoder) has a "
            "transformers class"
        )
    v = cfg.vision
    qwen_layout = (v.rope_layout, v.patch_order, v.fused_qkv, v.patch_bias, v.pos_grid,
                   v.final_norm, v.norm_eps) == ("hw_halves", "merge_blocks", True, False, 0,
                                                 False, 1e-6)  # fmt: skip
    if not qwen_layout or v.intermediate_size % v.hidden_size:
        raise ConfigError("this vision encoder is not expressible as Qwen2-VL's vision tower")
    text = to_hf_config_dict(cfg.text)
    text["model_type"] = cfg.hf_extra.get("text_model_type", "qwen2_vl_text")
    rope = dict(text.pop("rope_parameters", None) or text.pop("rope_scaling", None) or {})
    rope.setdefault("rope_type", "default")
    rope.setdefault("rope_theta", cfg.text.rope_theta)
    text.pop("rope_theta", None)
    text.pop("rope_scaling", None)
    rope["mrope_section"] = list(cfg.mrope_section)
    text["rope_parameters"] = rope
    text.pop("architectures", None)
    tie = text.pop("tie_word_embeddings", False)
    vision = {
        "depth": v.depth,
        "embed_dim": v.hidden_size,
        "hidden_size": v.out_hidden_size,
        "hidden_act": v.hidden_act,
        "mlp_ratio": v.intermediate_size // v.hidden_size,
        "num_heads": v.num_heads,
        "in_channels": v.in_channels,
        "patch_size": v.patch_size,
        "spatial_merge_size": v.spatial_merge_size,
        "temporal_patch_size": v.temporal_patch_size,
        "initializer_range": v.initializer_range,
        "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
        "model_type": "qwen2_vl_vision",
    }
    out = {k: cfg.hf_extra[k] for k in ("transformers_version",) if k in cfg.hf_extra}
    out.update(
        architectures=[VLM_ARCHITECTURE],
        model_type=cfg.model_type,
        text_config=text,
        vision_config=vision,
        image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id,
        tie_word_embeddings=tie,
    )
    if cfg.pointer_size:  # lmforge's grounding head (`pointer_head.*` tensors); transformers
        out["pointer_head"] = {"size": cfg.pointer_size}  # keeps the key, skips the tensors
    return out


def vlm_state_from_hf(state: dict[str, torch.Tensor], config: VLMConfig) -> dict:
    """Checkpoint tensors → lmforge names (transformers-5 in-memory names
    ``model.language_model.*`` / ``model.visual.*`` too; a flattened patch weight is given
    the convolution's shape)."""
    v = config.vision
    conv = (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    out = {}
    for k, t in state.items():
        if k.startswith("model.language_model."):
            k = "model." + k.removeprefix("model.language_model.")
        elif k.startswith("model.visual."):
            k = k.removeprefix("model.")
        if k == PATCH_WEIGHT and t.ndim == 2 and t.numel() == math.prod(conv):
            t = t.reshape(conv)
        out[k] = t
    return out


def vlm_state_to_hf(state: dict[str, torch.Tensor], config: VLMConfig) -> dict:
    """lmforge tensors → checkpoint names: identical (Qwen2-VL's layout), checked to hold
    the vision tower and the language model."""
    if PATCH_WEIGHT not in state or "model.embed_tokens.weight" not in state:
        raise ConfigError("not a vision-language state dict (no patch embedding or embeddings)")
    return dict(state)


__all__ = [
    "VLM_ARCHITECTURE",
    "VLM_MODEL_TYPES",
    "vision_config_from_hf",
    "vlm_config_from_hf",
    "vlm_config_to_hf",
    "vlm_state_from_hf",
    "vlm_state_to_hf",
]
