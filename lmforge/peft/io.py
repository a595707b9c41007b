"""Adapters on disk in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

A folder written by `save_adapter` loads with ``peft.PeftModel.from_pretrained`` over the
HF export of the base model (LoRA / rsLoRA / DoRA / PiSSA, prefix tuning, prompt tuning),
and `load_adapter` reads folders PEFT wrote. Tensor names are PEFT's with the adapter
name removed: ``base_model.model.<module>.lora_A.weight``, ``…lora_B.weight``,
``…lora_magnitude_vector`` (DoRA), and ``prompt_embeddings`` (prefix / prompt tuning,
stored folded: the prefix MLP's output, not the MLP). Bottleneck adapters have no PEFT
equivalent and use peft_type ``LMFORGE_BOTTLENECK`` in the same layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.io import atomic_path, atomic_write_json, read_json
from lmforge.peft.lora import INITS, LoraConfig, add_lora, lora_layers
from lmforge.peft.state import peft_configs, register_adapter, set_adapter

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


class AdapterError(ValueError):
    """An adapter folder that cannot be loaded into this model (the message says why)."""


def is_adapter_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _adapter_name(model: nn.Module, adapter_name: str | None) -> str:
    configs = peft_configs(model)
    if not configs:
        raise ValueError("the model has no adapters to save (apply_lora / apply_prefix_tuning …)")
    if adapter_name is None:
        active = list(getattr(model, "active_adapters", []))
        if len(active) != 1:
            raise ValueError(f"name the adapter to save: active adapters are {active}")
        adapter_name = active[0]
    if adapter_name not in configs:
        raise ValueError(f"no adapter named {adapter_name!r}; the model has {list(configs)}")
    return adapter_name


# ---------------------------------------------------------------------- save
def save_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    adapter_name: str | None = None,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write adapter ``adapter_name`` (default: the active one) of ``model`` to ``path``."""
    name = _adapter_name(model, adapter_name)
    config = peft_configs(model)[name]
    if config.peft_type == "LORA":
        tensors, cfg = _lora_state(model, name, config)
    else:
        tensors, cfg = _other_state(model, name, config)
    cfg = {
        "peft_type": config.peft_type,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        **cfg,
    }
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_json(folder / CONFIG_FILE, cfg)
    return folder


def _lora_state(model: nn.Module, name: str, config: LoraConfig) -> tuple[dict, dict]:
    tensors = {}
    for module_name, layer in lora_layers(model).items():
        if name not in layer.adapter_names():
            continue
        if name in layer.merged:
            raise ValueError(f"adapter {name!r} is merged into {module_name}; unmerge to save")
        key = PREFIX + module_name
        tensors[f"{key}.lora_A.weight"] = layer.lora_A[name].weight
        tensors[f"{key}.lora_B.weight"] = layer.lora_B[name].weight
        if name in layer.lora_magnitude_vector:
            tensors[f"{key}.lora_magnitude_vector"] = layer.lora_magnitude_vector[name]
    init = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa"}[config.init]
    cfg = {
        "r": config.r,
        "lora_alpha": config.alpha,
        "target_modules": config.target_modules,
        "lora_dropout": config.dropout,
        "use_rslora": config.use_rslora,
        "use_dora": config.use_dora,
        "init_lora_weights": init,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    return tensors, cfg


def _other_state(model: nn.Module, name: str, config) -> tuple[dict, dict]:
    c = model.config
    common = {"num_layers": c.num_hidden_layers, "num_transformer_submodules": 1}
    if config.peft_type == "PREFIX_TUNING":
        enc = model.peft_prefix
        cfg = {
            **common,
            "num_virtual_tokens": config.num_virtual_tokens,
            "token_dim": c.num_key_value_heads * c.head_dim,
            "num_attention_heads": c.num_key_value_heads,
            "prefix_projection": config.projection,
            "encoder_hidden_size": config.encoder_hidden_size or c.num_key_value_heads * c.head_dim,
        }
        return {"prompt_embeddings": enc.rows(name)}, cfg  # folded: the MLP's output
    if config.peft_type == "PROMPT_TUNING":
        cfg = {
            **common,
            "num_virtual_tokens": config.num_virtual_tokens,
            "token_dim": c.hidden_size,
            "num_attention_heads": c.num_attention_heads,
            "prompt_tuning_init": "RANDOM",
        }
        return {"prompt_embeddings": model.peft_prompt.embedding[name]}, cfg
    if config.peft_type == "LMFORGE_BOTTLENECK":
        from lmforge.peft.adapters import bottleneck_state

        cfg = {"bottleneck": config.bottleneck, "target_modules": config.target_modules,
               "dropout": config.dropout}  # fmt: skip
        return bottleneck_state(model, name), cfg
    raise ValueError(f"cannot save adapters of type {config.peft_type}")


TRAINING_FILE = "adapter_training.safetensors"


def save_training_adapter(model: nn.Module, path: str | os.PathLike, tokenizer=None) -> Path:
    """A training checkpoint's weights when PEFT is on: the active adapter in PEFT format,
    plus every adapter parameter under its lmforge name (exact resume, e.g. a prefix's
    reparameterisation MLP, which the PEFT file stores folded), plus the tokenizer."""
    folder = save_adapter(model, path, base_model_name_or_path=getattr(model, "name_or_path", None))
    params = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters()
              if _is_adapter_param(n)}  # fmt: skip
    with atomic_path(folder / TRAINING_FILE) as tmp:
        save_file(params, str(tmp), metadata={"format": "pt"})
    if tokenizer is not None:
        (tokenizer.save if hasattr(tokenizer, "save") else tokenizer.save_pretrained)(folder)
    return folder


def load_training_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Restore the adapter parameters `save_training_adapter` wrote into ``model`` (which
    already carries the same adapters) in place."""
    folder = Path(path)
    stored = load_file(str(folder / TRAINING_FILE))
    expected = {n: p for n, p in model.named_parameters() if _is_adapter_param(n)}
    _copy_checked(expected, stored, folder / TRAINING_FILE)


def _is_adapter_param(name: str) -> bool:
    return name.startswith("peft_") or any(
        f".{part}." in name
        for part in (
            "lora_A",
            "lora_B",
            "lora_magnitude_vector",
            "adapter_down",
            "adapter_up",
        )  # fmt: skip
    )


# ---------------------------------------------------------------------- load
def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    folder = Path(path)
    if not is_adapter_dir(folder):
        raise AdapterError(
            f"{folder}: not an adapter folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    cfg = read_json(folder / CONFIG_FILE, "adapter config")
    if not isinstance(cfg, dict) or "peft_type" not in cfg:
        raise AdapterError(f"{folder / CONFIG_FILE}: expected a JSON object with 'peft_type'")
    task = cfg.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        raise AdapterError(f"{folder / CONFIG_FILE}: task_type {task!r}; only CAUSAL_LM loads")
    return cfg


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    adapter_name: str = "default",
    trainable: bool = False,
) -> nn.Module:
    """Add the adapter saved in ``path`` (by lmforge or PEFT) to ``model`` as
    ``adapter_name`` and activate it. With ``trainable=False`` (inference) nothing trains."""
    folder = Path(path)
    cfg = read_adapter_config(folder)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    if adapter_name in peft_configs(model):
        raise AdapterError(f"the model already has an adapter named {adapter_name!r}")
    if cfg["peft_type"] == "LORA":
        config = _lora_config(cfg, folder / CONFIG_FILE)
        add_lora(model, config, adapter_name)
        register_adapter(model, adapter_name, config)
        _load_lora_tensors(model, adapter_name, tensors, folder)
    else:
        _load_other(model, adapter_name, cfg, tensors, folder)
    set_adapter(model, adapter_name)
    if not trainable:
        for p in model.parameters():
            p.requires_grad_(False)
    return model


def _load_other(model: nn.Module, name: str, cfg: dict, tensors: dict, folder: Path) -> None:
    where = folder / CONFIG_FILE
    kind = cfg["peft_type"]
    c = model.config
    try:
        if kind == "PREFIX_TUNING":
            from lmforge.peft.prefix import PrefixConfig, add_prefix

            if int(cfg.get("num_layers", c.num_hidden_layers)) != c.num_hidden_layers:
                raise AdapterError(f"{where}: num_layers={cfg['num_layers']} but the model has "
                                   f"{c.num_hidden_layers}")  # fmt: skip
            # Stored folded (PEFT's inference format): load as a direct prefix.
            config = PrefixConfig(int(cfg["num_virtual_tokens"]), projection=False)
            enc = add_prefix(model, config, name)
            register_adapter(model, name, config)
            _copy_checked(
                {"prompt_embeddings": enc.embedding[name]}, tensors, folder / WEIGHTS_FILE
            )
        elif kind == "PROMPT_TUNING":
            from lmforge.peft.prompt import PromptConfig, add_prompt

            config = PromptConfig(int(cfg["num_virtual_tokens"]))
            prompt = add_prompt(model, config, name)
            register_adapter(model, name, config)
            _copy_checked({"prompt_embeddings": prompt.embedding[name]}, tensors,
                          folder / WEIGHTS_FILE)  # fmt: skip
        elif kind == "LMFORGE_BOTTLENECK":
            from lmforge.peft.adapters import BottleneckConfig, add_bottleneck, bottleneck_state

            config = BottleneckConfig(int(cfg["bottleneck"]), cfg["target_modules"],
                                      float(cfg.get("dropout", 0.0)))  # fmt: skip
            add_bottleneck(model, config, name)
            register_adapter(model, name, config)
            _copy_checked(bottleneck_state(model, name), tensors, folder / WEIGHTS_FILE)
        else:
            raise AdapterError(
                f"{where}: peft_type {kind!r} is not supported (LORA, PREFIX_TUNING, "
                "PROMPT_TUNING, LMFORGE_BOTTLENECK)"
            )
    except KeyError as exc:
        raise AdapterError(f"{where}: missing field {exc.args[0]!r}") from exc


def _lora_config(cfg: dict[str, Any], where: Path) -> LoraConfig:
    unsupported = {
        "bias": "none",
        "modules_to_save": None,
        "layers_to_transform": None,
        "fan_in_fan_out": False,
        "exclude_modules": None,
        "target_parameters": None,
        "trainable_token_indices": None,
        "lora_bias": False,
        "layer_replication": None,
    }
    for key, ok in unsupported.items():
        if cfg.get(key, ok) not in (ok, [], {}):
            raise AdapterError(f"{where}: {key}={cfg[key]!r} is not supported (expected {ok!r})")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise AdapterError(f"{where}: per-module {key} is not supported")
    init = cfg.get("init_lora_weights", True)
    init = (
        {True: "kaiming", False: "kaiming"}.get(init, init) if not isinstance(init, str) else init
    )
    if init not in INITS:
        raise AdapterError(f"{where}: init_lora_weights={init!r} is not supported ({INITS})")
    try:
        return LoraConfig(
            r=int(cfg["r"]),
            alpha=float(cfg.get("lora_alpha", 8)),
            target_modules=cfg["target_modules"],
            dropout=float(cfg.get("lora_dropout", 0.0)),
            use_rslora=bool(cfg.get("use_rslora", False)),
            use_dora=bool(cfg.get("use_dora", False)),
            init=init,
        )
    except KeyError as exc:
        raise AdapterError(f"{where}: missing field {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"{where}: {exc}") from exc


def _load_lora_tensors(model: nn.Module, name: str, tensors: dict, folder: Path) -> None:
    expected: dict[str, torch.Tensor] = {}
    for module_name, layer in lora_layers(model).items():
        if name not in layer.adapter_names():
            continue
        key = PREFIX + module_name
        expected[f"{key}.lora_A.weight"] = layer.lora_A[name].weight
        expected[f"{key}.lora_B.weight"] = layer.lora_B[name].weight
        if name in layer.lora_magnitude_vector:
            expected[f"{key}.lora_magnitude_vector"] = layer.lora_magnitude_vector[name]
    # PEFT also stores the base weight of an adapted lm_head / embedding; it is the base's.
    stored = {k: v for k, v in tensors.items() if not k.endswith(".base_layer.weight")}
    _copy_checked(expected, stored, folder / WEIGHTS_FILE)


def _copy_checked(expected: dict[str, torch.Tensor], stored: dict, where: Path) -> None:
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    bad = [
        f"{k}: file {tuple(stored[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in stored and stored[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {missing[:6]}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {unexpected[:6]}")
    if bad:
        problems.append(f"shape mismatches: {bad[:6]}")
    if problems:
        raise AdapterError(f"{where}: adapter does not match the model — " + "; ".join(problems))
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(stored[k].to(p.dtype))


__all__ = [
    "AdapterError",
    "is_adapter_dir",
    "load_adapter",
    "read_adapter_config",
    "load_training_adapter",
    "save_adapter",
    "save_training_adapter",
]
