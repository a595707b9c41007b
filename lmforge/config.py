"""`ModelConfig`: the one configuration of lmforge's decoder-only transformer.

Every architecture family (Llama, Qwen2, Qwen3, Mistral, DeepSeek-V3) is a `ModelConfig` plus a
mapping to and from Hugging Face's `config.json`. The mapping is lossless: keys that do
not change the computation (``architectures``, ``use_cache``, ``torch_dtype`` …) are kept
verbatim in ``hf_extra`` and written back, and the RoPE block is written in the style it
was read in (``rope_parameters`` as transformers ≥ 5 writes it, or the older
``rope_theta`` + ``rope_scaling`` pair). Keys lmforge does not know, or values it cannot
honour, raise a `ConfigError` naming them.

This file is long because the HF mapping of every family (the keys each accepts, RoPE in
both storage styles, the Qwen sliding-window forms, DeepSeek-V3's latent attention and expert
fields, what a family cannot express) sits beside the fields it maps and their validation, so
a new field and its ``config.json`` name are added in one place. (Splitting the mapping into
its own module would make ``ModelConfig.from_pretrained`` / ``to_hf_dict`` an import cycle.)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "deepseek_v3")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
LAYER_TYPES = ("full_attention", "sliding_attention")

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}
# Class-name suffixes of the heads transformers builds on a family's body: an
# ``architectures`` entry must be the family's prefix plus one of these.
_ARCHITECTURE_HEADS = (
    "ForCausalLM",
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "Model",
)

# Keys whose values lmforge keeps verbatim: they describe metadata or HF runtime switches,
# not the function the network computes.
_PASSTHROUGH_KEYS = {
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "pretraining_tp",
    "_name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",
    "label2id",
    "problem_type",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "tie_encoder_decoder",
    "max_window_layers",
    "use_sliding_window",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "attention_dropout",
}

# Keys mapped onto `ModelConfig` fields, per family.
_COMMON_KEYS = {
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "tie_word_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
}
_FAMILY_KEYS = {
    "llama": {"head_dim", "attention_bias", "mlp_bias"},
    "qwen2": {"sliding_window", "layer_types"},
    "qwen3": {"head_dim", "attention_bias", "sliding_window", "layer_types"},
    "mistral": {"head_dim", "sliding_window"},
    "deepseek_v3": {
        "attention_bias",
        "head_dim",  # derived: qk_rope_head_dim
        "qk_head_dim",  # derived: qk_nope_head_dim + qk_rope_head_dim
        "q_lora_rank",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "rope_interleave",
        "n_routed_experts",
        "n_shared_experts",
        "moe_intermediate_size",
        "num_experts_per_tok",
        "n_group",
        "topk_group",
        "norm_topk_prob",
        "routed_scaling_factor",
        "first_k_dense_replace",
        "aux_loss_alpha",
        "num_nextn_predict_layers",
        # DeepSeek's own config.json: kept verbatim after checking the value lmforge computes
        "scoring_func",
        "topk_method",
        "moe_layer_freq",
        "seq_aux",
        "ep_size",
        "output_router_logits",
        "auto_map",
    },
}
# DeepSeek-V3 keys whose values are fixed by the computation lmforge (and transformers) runs.
_DEEPSEEK_FIXED = {"scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1}
# transformers' DeepseekV3Config defaults, used for keys a config.json leaves out.
_DEEPSEEK_DEFAULTS: dict[str, Any] = {
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "rope_interleave": True,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "moe_intermediate_size": 2048,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 3,
    "num_nextn_predict_layers": 1,
}
_ROPE_KEYS = {
    "rope_type",
    "type",
    "rope_theta",
    "factor",
    "original_max_position_embeddings",
    "low_freq_factor",
    "high_freq_factor",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
    "truncate",
}


class ConfigError(ValueError):
    """A configuration that lmforge cannot honour — a model config, a training recipe or an
    algorithm section; the message names the file and the offending fields. The one config
    error class of the package (`lmforge.train.config` raises it too)."""


@dataclass
class ModelConfig:
    """Architecture of a decoder-only transformer LM.

    ``head_dim`` defaults to ``hidden_size // num_attention_heads`` and
    ``num_key_value_heads`` to ``num_attention_heads`` (MHA); fewer KV heads give GQA, one
    gives MQA.

    **Multi-head latent attention** (MLA, DeepSeek-V2 §2.1) is on when ``kv_lora_rank`` is
    set: keys and values are compressed jointly to a latent of ``kv_lora_rank`` per token, the
    query optionally to ``q_lora_rank``; each head's query/key is ``qk_nope_head_dim``
    un-rotated dims plus ``qk_rope_head_dim`` rotated dims (the rotated key shared by all
    heads), values are ``v_head_dim``. What the cache holds per token is then one shared
    "head" of ``kv_lora_rank + qk_rope_head_dim`` (the latent and the rotated key), so for MLA
    ``num_key_value_heads`` is 1 and ``head_dim`` is that width (both derived); RoPE runs on
    ``rope_head_dim`` = ``qk_rope_head_dim``. ``rope_interleave`` rotates adjacent pairs
    (DeepSeek's storage order) instead of the two halves.

    **DeepSeekMoE** (DeepSeek-V3 §2.1.2) is on when ``n_routed_experts`` is set: layers from
    ``first_k_dense_replace`` on replace the dense MLP by ``n_shared_experts`` shared and
    ``n_routed_experts`` routed SwiGLU experts of width ``moe_intermediate_size``; each token
    picks ``num_experts_per_tok`` routed experts by sigmoid affinity (plus the selection-only
    correction bias) within the best ``topk_group`` of ``n_group`` groups; the gate weights
    are normalised (``norm_topk_prob``) and scaled by ``routed_scaling_factor``.
    ``aux_loss_alpha`` > 0 adds the sequence-wise balance loss (eq. 17-20) in training.
    ``num_nextn_predict_layers`` multi-token-prediction modules (§2.2) add
    ``mtp_loss_weight`` × the mean of their losses. ``rope_scaling`` is ``None`` or a dict with ``rope_type`` in
    ``linear | llama3 | yarn`` and that type's parameters (HF's names). ``layer_types``
    lists ``full_attention`` / ``sliding_attention`` per layer; when it is ``None`` and
    ``sliding_window`` is set, every layer uses the window.
    """

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 512
    intermediate_size: int = 1408
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    layer_types: list[str] | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # Multi-head latent attention (on when kv_lora_rank is set)
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    rope_interleave: bool = False
    # DeepSeekMoE (on when n_routed_experts is set)
    n_routed_experts: int | None = None
    n_shared_experts: int = 0
    moe_intermediate_size: int | None = None
    num_experts_per_tok: int = 1
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    first_k_dense_replace: int = 0
    aux_loss_alpha: float = 0.0
    # Multi-token prediction
    num_nextn_predict_layers: int = 0
    mtp_loss_weight: float = 0.3
    hf_extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    rope_format: str = field(default="parameters", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.use_mla and _all_ints(self.kv_lora_rank, self.qk_rope_head_dim):
            latent_width = self.kv_lora_rank + self.qk_rope_head_dim
            for name, derived in (("num_key_value_heads", 1), ("head_dim", latent_width)):
                value = getattr(self, name)
                if value is not None and value != derived:
                    raise ConfigError(
                        f"{name}={value} with MLA (kv_lora_rank set): it is derived "
                        f"({derived}: one cached latent of kv_lora_rank + qk_rope_head_dim); "
                        "leave it unset"
                    )
                setattr(self, name, derived)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size={self.hidden_size} is not divisible by "
                    f"num_attention_heads={self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check internal consistency; raise `ConfigError` naming every bad field."""
        errors = []
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            errors.append(f"model_type={self.model_type!r} (supported: {SUPPORTED_MODEL_TYPES})")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                errors.append(f"{name}={value!r} must be a positive integer")
        if (
            isinstance(self.num_key_value_heads, int)
            and self.num_key_value_heads > 0
            and self.num_attention_heads % self.num_key_value_heads
        ):
            errors.append(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if isinstance(self.head_dim, int) and self.head_dim % 2 and not self.use_mla:
            errors.append(f"head_dim={self.head_dim} must be even for RoPE")
        errors.extend(_mla_errors(self))
        errors.extend(_moe_errors(self))
        if not _is_int(self.num_nextn_predict_layers) or self.num_nextn_predict_layers < 0:
            errors.append(
                f"num_nextn_predict_layers={self.num_nextn_predict_layers!r} must be an integer ≥ 0"
            )
        if not isinstance(self.mtp_loss_weight, (int, float)) or self.mtp_loss_weight < 0:
            errors.append(f"mtp_loss_weight={self.mtp_loss_weight!r} must be ≥ 0")
        if self.model_type == "deepseek_v3" and not (self.use_mla and self.use_moe):
            errors.append(
                "model_type='deepseek_v3' needs kv_lora_rank (MLA) and n_routed_experts (MoE)"
            )
        if self.hidden_act != "silu":
            errors.append(f"hidden_act={self.hidden_act!r} (only 'silu' / SwiGLU is supported)")
        if self.sliding_window is not None and (
            not isinstance(self.sliding_window, int) or self.sliding_window <= 0
        ):
            errors.append(f"sliding_window={self.sliding_window!r} must be a positive integer")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                errors.append(
                    f"layer_types has {len(self.layer_types)} entries, "
                    f"num_hidden_layers={self.num_hidden_layers}"
                )
            bad = sorted({t for t in self.layer_types if t not in LAYER_TYPES})
            if bad:
                errors.append(f"layer_types contains {bad} (allowed: {LAYER_TYPES})")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                errors.append("layer_types has sliding_attention layers but sliding_window is None")
        errors.extend(_rope_errors(self.rope_scaling))
        if errors:
            raise ConfigError("invalid ModelConfig: " + "; ".join(errors))

    # ------------------------------------------------------------------ derived
    @property
    def use_mla(self) -> bool:
        """Multi-head latent attention instead of MHA/GQA (``kv_lora_rank`` is set)."""
        return self.kv_lora_rank is not None

    @property
    def use_moe(self) -> bool:
        """DeepSeekMoE layers after the first ``first_k_dense_replace`` dense ones."""
        return self.n_routed_experts is not None

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx`` has a mixture-of-experts MLP."""
        return self.use_moe and layer_idx >= self.first_k_dense_replace

    @property
    def rope_head_dim(self) -> int:
        """Width RoPE rotates: ``qk_rope_head_dim`` for MLA, ``head_dim`` otherwise."""
        return self.qk_rope_head_dim if self.use_mla else self.head_dim

    @property
    def num_kv_groups(self) -> int:
        """Query heads per KV head (1 = MHA, num_attention_heads = MQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    def layer_window(self, layer_idx: int) -> int | None:
        """Sliding-window size of layer ``layer_idx``, or ``None`` for full attention.

        Indices from ``num_hidden_layers`` on are the MTP blocks (`lmforge.models.mtp`, as in
        the HF layout). Without ``layer_types`` they use the window like every layer; with
        ``layer_types`` (which covers the main layers only) they use full attention, as
        DeepSeek-V3's MTP block does. transformers leaves this to a per-model
        ``mtp_layer_types`` list (full attention by default for Step3p7, sliding for Mellum;
        ``PreTrainedConfig.get_mtp_config`` refuses to guess once ``layer_types`` is set);
        lmforge has no such field."""
        if self.sliding_window is None:
            return None
        if not 0 <= layer_idx < self.num_hidden_layers + self.num_nextn_predict_layers:
            raise IndexError(
                f"layer_window({layer_idx}): the model has {self.num_hidden_layers} layers "
                f"and {self.num_nextn_predict_layers} MTP blocks"
            )
        if self.layer_types is not None and layer_idx >= self.num_hidden_layers:
            return None
        if self.layer_types is None or self.layer_types[layer_idx] == "sliding_attention":
            return self.sliding_window
        return None

    def num_parameters(self) -> int:
        """Exact parameter count of the model this config builds (tied weights counted once)."""
        h, d = self.hidden_size, self.head_dim
        if self.use_mla:
            attn = _mla_parameters(self)
        else:
            q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
            attn = h * q + 2 * h * kv + q * h
            attn += (q + 2 * kv) * self.qkv_bias + h * self.o_bias + 2 * d * self.qk_norm
        dense = 3 * h * self.intermediate_size + (2 * self.intermediate_size + h) * self.mlp_bias
        moe = 0
        if self.use_moe:
            width = self.moe_intermediate_size
            experts = self.n_routed_experts + self.n_shared_experts
            moe = 3 * h * width * experts + self.n_routed_experts * h  # + the gate
        total = 0
        for i in range(self.num_hidden_layers):
            total += attn + (moe if self.is_moe_layer(i) else dense) + 2 * h
        # MTP module: 2 norms, the [2h → h] projection, one block (attention + MLP as the
        # last layer), its final norm
        last = self.num_hidden_layers - 1
        mtp_block = attn + (moe if self.is_moe_layer(last) else dense) + 2 * h
        total += self.num_nextn_predict_layers * (2 * h + 2 * h * h + mtp_block + h)
        emb = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return emb + total + h + head

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (lmforge's own format)."""
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from `to_dict` output; unknown keys raise `ConfigError` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields: {unknown}")
        return cls(**copy.deepcopy(data))

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` dict for this model (see `to_hf_config_dict`)."""
        return to_hf_config_dict(self)

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Read an HF ``config.json`` dict (see `from_hf_config_dict`)."""
        return from_hf_config_dict(data, source=source)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ModelConfig:
        """Read ``config.json`` from a folder (or the file itself)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(f"{file}: no such file (expected an HF config.json)")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a JSON object, got {type(data).__name__}")
        return from_hf_config_dict(data, source=str(file))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _all_ints(*values: Any) -> bool:
    return all(_is_int(v) for v in values)


def _mla_errors(cfg: ModelConfig) -> list[str]:
    """Checks of the latent-attention fields (all unset unless ``kv_lora_rank`` is set)."""
    names = ("q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    if not cfg.use_mla:
        stray = [n for n in names if getattr(cfg, n) is not None]
        return [f"{stray} are MLA fields: set kv_lora_rank too"] if stray else []
    errors = []
    for name in ("kv_lora_rank", *names):
        value = getattr(cfg, name)
        if name == "q_lora_rank" and value is None:
            continue  # a plain query projection
        if not _is_int(value) or value <= 0:
            errors.append(f"{name}={value!r} must be a positive integer with MLA")
    rope = cfg.qk_rope_head_dim
    if _is_int(rope) and rope % 2:
        errors.append(f"qk_rope_head_dim={rope} must be even: RoPE rotates pairs of dims")
    if cfg.qk_norm:
        errors.append("qk_norm has no meaning with MLA (its latents have their own RMSNorms)")
    return errors


def _moe_errors(cfg: ModelConfig) -> list[str]:
    """Checks of the DeepSeekMoE fields."""
    if not cfg.use_moe:
        return []
    errors = []
    for name in ("n_routed_experts", "moe_intermediate_size", "num_experts_per_tok", "n_group",
                 "topk_group"):  # fmt: skip
        value = getattr(cfg, name)
        if not _is_int(value) or value <= 0:
            errors.append(f"{name}={value!r} must be a positive integer")
    for name in ("n_shared_experts", "first_k_dense_replace"):
        value = getattr(cfg, name)
        if not _is_int(value) or value < 0:
            errors.append(f"{name}={value!r} must be an integer ≥ 0")
    if errors:
        return errors
    n, k, groups, top_groups = (
        cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
    )  # fmt: skip
    if k > n:
        errors.append(f"num_experts_per_tok={k} > n_routed_experts={n}")
    if n % groups:
        errors.append(f"n_routed_experts={n} is not divisible by n_group={groups}")
    elif top_groups > groups:
        errors.append(f"topk_group={top_groups} > n_group={groups}")
    else:
        per_group = n // groups
        if groups > 1 and per_group < 2:
            errors.append(
                f"n_group={groups} leaves {per_group} expert per group; groups are scored by "
                "their top-2 affinities, so each needs ≥ 2"
            )
        if k <= n and k > top_groups * per_group:
            errors.append(
                f"num_experts_per_tok={k} > the {top_groups * per_group} experts of the "
                f"topk_group={top_groups} selected groups"
            )
    if cfg.first_k_dense_replace > cfg.num_hidden_layers:
        errors.append(
            f"first_k_dense_replace={cfg.first_k_dense_replace} > "
            f"num_hidden_layers={cfg.num_hidden_layers}"
        )
    if not isinstance(cfg.routed_scaling_factor, (int, float)) or cfg.routed_scaling_factor <= 0:
        errors.append(f"routed_scaling_factor={cfg.routed_scaling_factor!r} must be > 0")
    if not isinstance(cfg.aux_loss_alpha, (int, float)) or cfg.aux_loss_alpha < 0:
        errors.append(f"aux_loss_alpha={cfg.aux_loss_alpha!r} must be ≥ 0")
    return errors


def _mla_parameters(cfg: ModelConfig) -> int:
    """Parameters of one MLA block (see `lmforge.nn.mla`)."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    r, bias = cfg.kv_lora_rank, cfg.qkv_bias
    if cfg.q_lora_rank is None:
        q = h * heads * qk
    else:
        q = h * cfg.q_lora_rank + cfg.q_lora_rank * bias + cfg.q_lora_rank
        q += cfg.q_lora_rank * heads * qk
    kv = h * (r + cfg.qk_rope_head_dim) + (r + cfg.qk_rope_head_dim) * bias + r
    kv += r * heads * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    out = heads * cfg.v_head_dim * h + h * cfg.o_bias
    return q + kv + out


def _rope_errors(scaling: dict[str, Any] | None) -> list[str]:
    if scaling is None:
        return []
    if not isinstance(scaling, dict):
        return [f"rope_scaling={scaling!r} must be a dict or None"]
    errors = []
    unknown = sorted(set(scaling) - _ROPE_KEYS)
    if unknown:
        errors.append(f"rope_scaling has unknown keys {unknown}")
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type not in ROPE_TYPES:
        errors.append(f"rope_scaling.rope_type={rope_type!r} (supported: {ROPE_TYPES})")
    required = {
        "linear": ["factor"],
        "llama3": ["factor", "low_freq_factor", "high_freq_factor"],
        "yarn": ["factor"],
    }.get(rope_type, [])
    missing = [k for k in required if scaling.get(k) is None]
    if missing:
        errors.append(f"rope_scaling ({rope_type}) is missing {missing}")
    return errors


# ---------------------------------------------------------------------- HF mapping
def from_hf_config_dict(data: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Map an HF ``config.json`` dict to a `ModelConfig`.

    Raises `ConfigError` for an unsupported ``model_type``, for keys lmforge does not
    know (listing all of them) and for values it cannot honour.
    """
    data = copy.deepcopy(data)
    model_type = data.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{source}: model_type={model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    known = _COMMON_KEYS | _FAMILY_KEYS[model_type] | _PASSTHROUGH_KEYS
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unsupported fields for model_type={model_type!r}: {unknown}")
    missing = [
        k
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
        if k not in data
    ]
    if missing:
        raise ConfigError(f"{source}: missing required fields {missing}")

    _check_architectures(data.get("architectures"), model_type, source)
    extra = {k: data[k] for k in _PASSTHROUGH_KEYS if k in data}
    dropout = extra.get("attention_dropout", 0.0)
    if dropout not in (0, 0.0, None):
        raise ConfigError(f"{source}: attention_dropout={dropout} is not supported (must be 0)")
    theta, scaling, rope_format = _read_rope(data, source)

    kw: dict[str, Any] = dict(
        model_type=model_type,
        vocab_size=data["vocab_size"],
        hidden_size=data["hidden_size"],
        intermediate_size=data["intermediate_size"],
        num_hidden_layers=data["num_hidden_layers"],
        num_attention_heads=data.get("num_attention_heads", 32),
        num_key_value_heads=data.get("num_key_value_heads"),
        head_dim=data.get("head_dim"),
        hidden_act=data.get("hidden_act", "silu"),
        rms_norm_eps=data.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings=data.get("tie_word_embeddings", False),
        max_position_embeddings=data.get("max_position_embeddings", 2048),
        initializer_range=data.get("initializer_range", 0.02),
        bos_token_id=data.get("bos_token_id"),
        eos_token_id=data.get("eos_token_id"),
        pad_token_id=data.get("pad_token_id"),
        hf_extra=extra,
        rope_format=rope_format,
    )
    if model_type == "llama":
        kw["qkv_bias"] = kw["o_bias"] = bool(data.get("attention_bias", False))
        kw["mlp_bias"] = bool(data.get("mlp_bias", False))
    elif model_type == "qwen2":
        kw["qkv_bias"] = True
    elif model_type == "qwen3":
        kw["qkv_bias"] = kw["o_bias"] = bool(data.get("attention_bias", False))
        kw["qk_norm"] = True
    if model_type in ("qwen2", "qwen3"):
        _read_qwen_window(data, kw, extra)
    elif model_type == "mistral":
        kw["sliding_window"] = data.get("sliding_window")
    elif model_type == "deepseek_v3":
        _read_deepseek(data, kw, extra, source)
    try:
        return ModelConfig(**kw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _read_rope(data: dict[str, Any], source: str) -> tuple[float, dict | None, str]:
    """Return (theta, scaling-or-None, format) from either HF RoPE style."""
    if data.get("rope_parameters") is not None:
        params = dict(data["rope_parameters"])
        if not isinstance(params.get("rope_theta", 0.0), (int, float)):
            raise ConfigError(f"{source}: per-layer rope_parameters are not supported")
        theta = float(params.pop("rope_theta", data.get("rope_theta", 10000.0)))
        fmt = "parameters"
    else:
        params = dict(data.get("rope_scaling") or {})
        theta = float(data.get("rope_theta", 10000.0))
        fmt = "legacy"
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default" and set(params) <= {"rope_type", "type"}:
        # Remember an explicit legacy {"rope_type": "default"} so the round trip is exact.
        return theta, (params or None) if fmt == "legacy" else None, fmt
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{source}: rope type {rope_type!r} is not supported ({ROPE_TYPES})")
    return theta, params, fmt


def _check_architectures(architectures: Any, model_type: str, source: str) -> None:
    """An ``architectures`` entry must name a head of the ``model_type``'s family: a
    ``MistralForCausalLM`` with ``model_type: llama`` is a contradiction, not a detail."""
    if architectures is None:
        return
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ConfigError(f"{source}: architectures={architectures!r} must be a list of strings")
    prefix = _ARCHITECTURES[model_type].removesuffix("ForCausalLM")
    allowed = {prefix + head for head in _ARCHITECTURE_HEADS}
    bad = [a for a in architectures if a not in allowed]
    if bad:
        raise ConfigError(
            f"{source}: architectures={bad} contradicts model_type={model_type!r} "
            f"(expected {_ARCHITECTURES[model_type]} or another {prefix}* head)"
        )


def _read_deepseek(
    data: dict[str, Any], kw: dict[str, Any], extra: dict[str, Any], source: str
) -> None:
    """DeepSeek-V3's latent attention, experts and MTP keys (transformers' defaults for the
    keys left out); the derived ``head_dim`` / ``qk_head_dim`` must agree."""
    get = lambda key: data.get(key, _DEEPSEEK_DEFAULTS.get(key))  # noqa: E731
    for key, fixed in _DEEPSEEK_FIXED.items():
        if key in data and data[key] != fixed:
            raise ConfigError(
                f"{source}: {key}={data[key]!r} is not supported (DeepSeek-V3 uses {fixed!r})"
            )
        if key in data:
            extra[key] = data[key]
    for key in ("seq_aux", "ep_size", "output_router_logits", "auto_map", "num_key_value_heads"):
        if key in data:  # MLA has no K/V heads of its own: HF's value is kept verbatim
            extra[key] = data[key]
    for key in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                "v_head_dim", "n_routed_experts", "n_shared_experts", "moe_intermediate_size",
                "num_experts_per_tok", "n_group", "topk_group", "first_k_dense_replace",
                "num_nextn_predict_layers"):  # fmt: skip
        kw[key] = get(key)
    kw["rope_interleave"] = bool(get("rope_interleave"))
    kw["norm_topk_prob"] = bool(get("norm_topk_prob"))
    kw["routed_scaling_factor"] = float(get("routed_scaling_factor"))
    kw["aux_loss_alpha"] = float(data.get("aux_loss_alpha", 0.0))
    kw["qkv_bias"] = kw["o_bias"] = bool(data.get("attention_bias", False))
    kw["num_key_value_heads"] = kw["head_dim"] = None  # derived from the latent width
    rope, nope = kw["qk_rope_head_dim"], kw["qk_nope_head_dim"]
    if "head_dim" in data and data["head_dim"] != rope:
        raise ConfigError(
            f"{source}: head_dim={data['head_dim']} must equal qk_rope_head_dim={rope} "
            "(the rotated part of each head)"
        )
    if "qk_head_dim" in data and _all_ints(rope, nope) and data["qk_head_dim"] != rope + nope:
        raise ConfigError(
            f"{source}: qk_head_dim={data['qk_head_dim']} must equal qk_nope_head_dim + "
            f"qk_rope_head_dim = {nope} + {rope}"
        )


def _read_qwen_window(data: dict[str, Any], kw: dict[str, Any], extra: dict[str, Any]) -> None:
    window = data.get("sliding_window")
    layer_types = data.get("layer_types")
    use_window = data.get("use_sliding_window", False)
    n = data["num_hidden_layers"]
    if layer_types is None and use_window and window is not None:
        first = data.get("max_window_layers", n)
        layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    if use_window and window is not None:
        kw["sliding_window"] = window
        kw["layer_types"] = layer_types
    else:
        # HF ignores the window unless use_sliding_window; keep the raw values verbatim.
        if "sliding_window" in data:
            extra["sliding_window"] = window
        if layer_types is not None:
            if any(t == "sliding_attention" for t in layer_types):
                raise ConfigError(
                    "layer_types has sliding_attention layers but use_sliding_window is false"
                )
            extra["layer_types"] = layer_types


def to_hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Map a `ModelConfig` to the ``config.json`` dict that `transformers` loads unchanged."""
    out: dict[str, Any] = copy.deepcopy(cfg.hf_extra)
    mt = cfg.model_type
    out.update(
        model_type=mt,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.hf_extra.get("num_key_value_heads", cfg.num_attention_heads)
        if cfg.use_mla
        else cfg.num_key_value_heads,
        hidden_act=cfg.hidden_act,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )
    _write_rope(cfg, out)
    _check_family_expressible(cfg)
    if mt == "deepseek_v3":
        _write_deepseek(cfg, out)
    elif mt != "qwen2":
        out["head_dim"] = cfg.head_dim
    if mt in ("llama", "qwen3"):
        out["attention_bias"] = cfg.qkv_bias
    if mt == "llama":
        out["mlp_bias"] = cfg.mlp_bias
    if mt in ("qwen2", "qwen3"):
        n = cfg.num_hidden_layers
        if cfg.sliding_window is not None:
            types = cfg.layer_types or ["sliding_attention"] * n
            out["use_sliding_window"] = True
            out["sliding_window"] = cfg.sliding_window
            out["layer_types"] = list(types)
            first = next((i for i, t in enumerate(types) if t == "sliding_attention"), n)
            out["max_window_layers"] = first
        else:
            out["use_sliding_window"] = False
            out.setdefault("sliding_window", None)
            if "layer_types" in out:
                out["layer_types"] = ["full_attention"] * n
    if mt == "mistral":
        out["sliding_window"] = cfg.sliding_window
    return out


def _write_deepseek(cfg: ModelConfig, out: dict[str, Any]) -> None:
    out.update(
        head_dim=cfg.qk_rope_head_dim,
        qk_head_dim=cfg.qk_nope_head_dim + cfg.qk_rope_head_dim,
        attention_bias=cfg.qkv_bias,
        q_lora_rank=cfg.q_lora_rank,
        kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim,
        rope_interleave=cfg.rope_interleave,
        n_routed_experts=cfg.n_routed_experts,
        n_shared_experts=cfg.n_shared_experts,
        moe_intermediate_size=cfg.moe_intermediate_size,
        num_experts_per_tok=cfg.num_experts_per_tok,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
        norm_topk_prob=cfg.norm_topk_prob,
        routed_scaling_factor=cfg.routed_scaling_factor,
        first_k_dense_replace=cfg.first_k_dense_replace,
        num_nextn_predict_layers=cfg.num_nextn_predict_layers,
    )
    if cfg.aux_loss_alpha or "aux_loss_alpha" in out:
        out["aux_loss_alpha"] = cfg.aux_loss_alpha


def hf_architecture(model_type: str) -> str:
    """The ``architectures`` entry transformers and vLLM expect for ``model_type``."""
    return _ARCHITECTURES[model_type]


def _write_rope(cfg: ModelConfig, out: dict[str, Any]) -> None:
    scaling = copy.deepcopy(cfg.rope_scaling)
    if cfg.rope_format == "legacy":
        out["rope_theta"] = cfg.rope_theta
        out["rope_scaling"] = scaling
        out.pop("rope_parameters", None)
    else:
        params = scaling or {"rope_type": "default"}
        params["rope_theta"] = cfg.rope_theta
        out["rope_parameters"] = params
        out.pop("rope_theta", None)
        out.pop("rope_scaling", None)


def _check_family_expressible(cfg: ModelConfig) -> None:
    """Refuse to write a config.json that HF would read as a different network."""
    mt, problems = cfg.model_type, []
    expected_qkv = {"qwen2": True, "mistral": False}.get(mt)
    if expected_qkv is not None and cfg.qkv_bias != expected_qkv:
        problems.append(f"qkv_bias={cfg.qkv_bias} (fixed to {expected_qkv} in {mt})")
    if mt in ("llama", "qwen3") and cfg.o_bias != cfg.qkv_bias:
        problems.append(f"o_bias must equal qkv_bias in {mt}")
    if cfg.o_bias and mt not in ("llama", "qwen3", "deepseek_v3"):
        problems.append(f"o_bias is not expressible in {mt}")
    if mt != "llama" and cfg.mlp_bias:
        problems.append(f"mlp_bias is not expressible in {mt}")
    if cfg.qk_norm != (mt == "qwen3"):
        problems.append(f"qk_norm={cfg.qk_norm} (qwen3 always has it, others never)")
    if mt == "llama" and cfg.sliding_window is not None:
        problems.append("sliding_window is not expressible in llama")
    if mt == "mistral" and cfg.layer_types and "full_attention" in cfg.layer_types:
        problems.append("mistral applies the sliding window to every layer")
    if mt == "qwen2" and cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads:
        problems.append("qwen2 derives head_dim = hidden_size // num_attention_heads")
    if mt != "deepseek_v3" and (cfg.use_mla or cfg.use_moe or cfg.num_nextn_predict_layers):
        problems.append(f"MLA, MoE and MTP are expressible only as deepseek_v3, not {mt}")
    if mt == "deepseek_v3":
        if cfg.mlp_bias or cfg.sliding_window is not None:
            problems.append("deepseek_v3 has no mlp_bias and no sliding window")
        if cfg.o_bias != cfg.qkv_bias:
            problems.append("o_bias must equal qkv_bias in deepseek_v3 (attention_bias)")
    if problems:
        raise ConfigError(f"cannot express this ModelConfig as HF {mt!r}: " + "; ".join(problems))
