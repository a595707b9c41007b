"""Weight-only quantisation of a whole `CausalLM`, and its checkpoint format.

    quantize_model(model, "int8")                   # every projection and the LM head → Int8Linear
    quantize_model(model, "int4", group_size=64)    # → Int4Linear
    save_model(model, "ckpt-int8/")                 # lmforge.models.hf: writes the format below
    model = load_model("ckpt-int8/")                # comes back quantised
    dequantize_model(model)                         # plain nn.Linear again (fp32)

Only the linear layers of the decoder (attention and MLP projections) and the LM head are
quantised; the embedding, norms and MoE routers stay floating point. A tied LM head gets
its own quantised copy and the model is untied (``tie_word_embeddings=False``): the head is
read in full every decoding step, the embedding only one row per token.

**Checkpoint format.** An HF folder whose ``config.json`` has

    "quantization_config": {"quant_method": "lmforge", "bits": 8|4, "group_size": 64,
                            "modules": ["model.layers.0.self_attn.q_proj", …, "lm_head"]}

and, for every listed module ``M``, ``M.weight`` (int8 ``[out, in]``, or for int4 uint8
``[out, ceil(in/2)]`` with two codes per byte, the even column in the low nibble),
``M.weight_scale`` (fp32 ``[out]`` or ``[out, groups]``) and for int4 ``M.weight_zero``
(fp32 ``[out, groups]``): ``W ≈ scale·q`` (int8) or ``W ≈ scale·q + zero`` (int4). lmforge's
`load_model` reads it back quantised. **transformers cannot load it** (its
``quantization_config`` loaders know their own methods — bitsandbytes, GPTQ, AWQ, torchao,
compressed-tensors … — not this one, and its integer tensors are not ``nn.Linear``
weights); ``lmforge convert ckpt-int8/ --out ckpt-fp32/`` dequantises into a plain folder
that transformers loads (the weights are then the quantised values, not the originals).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from lmforge.config import ConfigError
from lmforge.models.weights_check import WeightsError, check_tensor
from lmforge.nn.quant import INT4_GROUP_SIZES, Int4Linear, Int8Linear

QUANT_METHOD = "lmforge"
SCHEMES = {"int8": 8, "int4": 4}
# integer tensors a quantised module stores, by bits
_INT_DTYPES = {8: torch.int8, 4: torch.uint8}


@dataclass
class QuantizationConfig:
    """What was quantised and how (the ``quantization_config`` block of ``config.json``)."""

    bits: int
    group_size: int = 64
    modules: list[str] = field(default_factory=list)

    def to_hf(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD, "bits": self.bits, "group_size": self.group_size,
                "modules": list(self.modules)}  # fmt: skip

    @classmethod
    def from_hf(cls, block: Any, source: str = "config.json") -> QuantizationConfig:
        """Read and check a ``quantization_config`` block; `ConfigError` naming the field."""
        where = f"{source}: quantization_config"
        if not isinstance(block, dict):
            raise ConfigError(f"{where}: expected an object, got {type(block).__name__}")
        method = block.get("quant_method")
        if method != QUANT_METHOD:
            raise ConfigError(
                f"{where}.quant_method={method!r} is not supported (lmforge reads only its own "
                f"{QUANT_METHOD!r} format; dequantise the checkpoint with the tool that made it)"
            )
        bits, group_size = block.get("bits"), block.get("group_size", 64)
        if bits not in SCHEMES.values():
            raise ConfigError(f"{where}.bits={bits!r} must be 8 or 4")
        if bits == 4 and group_size not in INT4_GROUP_SIZES:
            raise ConfigError(
                f"{where}.group_size={group_size!r} must be one of {INT4_GROUP_SIZES}"
            )
        modules = block.get("modules")
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise ConfigError(f"{where}.modules must be a list of module names")
        return cls(bits=bits, group_size=group_size, modules=list(modules))


def quantizable_linears(model: nn.Module, include_head: bool = True) -> list[str]:
    """Names of the `nn.Linear` modules `quantize_model` replaces: the decoder's projections
    (``model.layers.*``) and, with ``include_head``, ``lm_head``; never the MoE router."""
    names = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or name.endswith("mlp.gate"):
            continue
        if name.startswith("model.layers.") or (include_head and name == "lm_head"):
            names.append(name)
    return names


def _make(bits: int, group_size: int, linear: nn.Linear) -> nn.Module:
    if bits == 8:
        return Int8Linear.from_linear(linear)
    return Int4Linear.from_linear(linear, group_size=group_size)


def _untie_head(model: nn.Module) -> None:
    """Give a tied LM head a weight of its own (quantising it must not touch the embedding)."""
    if getattr(model.config, "tie_word_embeddings", False):
        model.config = copy.copy(model.config)
        model.config.tie_word_embeddings = False
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())


def quantize_model(
    model: nn.Module, scheme: str, group_size: int = 64, include_head: bool = True
) -> nn.Module:
    """Replace ``model``'s linear layers (see `quantizable_linears`) by `Int8Linear` /
    `Int4Linear` in place and record what was done in ``model.quantization_config``.

    ``scheme`` is ``"int8"`` (per-channel) or ``"int4"`` (groups of ``group_size`` input
    columns). Returns ``model``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantisation scheme {scheme!r} (use one of {sorted(SCHEMES)})")
    if getattr(model, "quantization_config", None) is not None:
        raise ValueError("the model is already quantised (dequantize_model it first)")
    bits = SCHEMES[scheme]
    if bits == 4 and group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    names = quantizable_linears(model, include_head)
    if "lm_head" in names:
        _untie_head(model)
    with torch.no_grad():
        for name in names:
            model.set_submodule(name, _make(bits, group_size, model.get_submodule(name)))
    model.quantization_config = QuantizationConfig(bits, group_size, names)
    return model


def prepare_quantized(model: nn.Module, qconfig: QuantizationConfig) -> None:
    """Swap the listed `nn.Linear` modules of a freshly built (meta-device) model for empty
    quantised ones, so a quantised checkpoint's state dict loads into it
    (``load_state_dict(assign=True)``); `load_model` calls this."""
    for name in qconfig.modules:
        try:
            linear = model.get_submodule(name)
        except AttributeError as exc:
            raise ConfigError(
                f"quantization_config.modules: the model has no module {name!r}"
            ) from exc
        if type(linear) is not nn.Linear:
            raise ConfigError(f"quantization_config.modules: {name!r} is not a linear layer")
        args = (linear.in_features, linear.out_features, linear.bias is not None)
        with torch.device("meta"):
            layer = (
                Int8Linear(*args) if qconfig.bits == 8 else Int4Linear(*args, qconfig.group_size)
            )
        model.set_submodule(name, layer)
    model.quantization_config = qconfig


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every quantised layer by a plain fp32 `nn.Linear` holding its dequantised
    weight; the model stays untied. Returns ``model``."""
    qconfig = getattr(model, "quantization_config", None)
    for name, module in list(model.named_modules()):
        if isinstance(module, Int8Linear | Int4Linear):
            model.set_submodule(name, module.to_linear())
    if qconfig is not None:
        del model.quantization_config
    return model


def quantization_config_of(
    raw_config: dict, source: str = "config.json"
) -> QuantizationConfig | None:
    """The checked ``quantization_config`` of a ``config.json`` dict (None when absent)."""
    if "quantization_config" not in raw_config:
        return None
    return QuantizationConfig.from_hf(raw_config["quantization_config"], source)


def without_quantization_config(raw_config: dict) -> dict:
    """``config.json`` dict without its ``quantization_config`` block (the model config)."""
    return {k: v for k, v in raw_config.items() if k != "quantization_config"}


def read_quantized_weights(
    files: Iterable[str | os.PathLike], qconfig: QuantizationConfig, allow_non_finite: bool = False
) -> dict[str, torch.Tensor]:
    """All tensors of a quantised checkpoint: the quantised modules' ``weight`` must have the
    integer dtype of ``qconfig.bits``; every other tensor is checked as in
    `lmforge.models.weights_check` (dtype, NaN/inf). Errors name file and tensor."""
    int_names = {f"{m}.weight" for m in qconfig.modules}
    int_dtype = _INT_DTYPES[qconfig.bits]
    state: dict[str, torch.Tensor] = {}
    for file in map(Path, files):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles have no __iter__
                    tensor = handle.get_tensor(key)
                    if key in int_names and tensor.dtype != int_dtype:
                        raise WeightsError(
                            f"{file}: tensor {key!r} has dtype {tensor.dtype}, expected "
                            f"{int_dtype} for {qconfig.bits}-bit quantised weights"
                        )
                    if key not in int_names and not tensor.is_floating_point():
                        raise WeightsError(
                            f"{file}: tensor {key!r} has dtype {tensor.dtype} but its module is "
                            "not listed in config.json's quantization_config.modules"
                        )
                    if key not in int_names:
                        check_tensor(key, tensor, file, allow_non_finite)
                    state[key] = tensor
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{file}: not a readable safetensors file ({exc})") from exc
    return state


def quantized_nbytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what a decoding step can stream at most)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


__all__ = [
    "QUANT_METHOD",
    "SCHEMES",
    "QuantizationConfig",
    "dequantize_model",
    "prepare_quantized",
    "quantizable_linears",
    "quantization_config_of",
    "quantize_model",
    "quantized_nbytes",
    "read_quantized_weights",
    "without_quantization_config",
]
