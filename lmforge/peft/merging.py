"""A LoRA adapter folded into its base checkpoint: a plain model at full inference speed
(``lmforge merge``, ``lmforge serve --adapter``), any adapter on its base for inference
(``lmforge generate --adapter``), and the base an adapter folder records.

    model = load_merged("ckpt/", "runs/sft-lora/model", dtype="bfloat16")
    model = load_adapted(adapter_base("runs/sft-lora/model"), "runs/sft-lora/model")

(The module is not called ``merge``: `lmforge.peft.merge` is the in-place merge function.)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lmforge.models.hf import load_model
from lmforge.models.hub import resolve_model_path
from lmforge.peft.io import AdapterError, load_adapter, read_adapter_config
from lmforge.peft.state import merge_and_unload


def load_merged(
    base: str | os.PathLike, adapter: str | os.PathLike, dtype: str | torch.dtype | None = None
) -> nn.Module:
    """The base checkpoint with a LoRA adapter folded into its weights (a plain model)."""
    kind = read_adapter_config(adapter)["peft_type"]
    if kind != "LORA":
        raise ValueError(f"{adapter}: a {kind} adapter cannot be merged into weights (only LoRA)")
    model = load_model(base, dtype=torch.float32)
    load_adapter(model, adapter)
    model = merge_and_unload(model)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    return model.to(dtype) if dtype is not None else model


def load_adapted(
    base: str | os.PathLike, adapter: str | os.PathLike, dtype: str | torch.dtype | None = None
) -> nn.Module:
    """The base checkpoint with the adapter of folder ``adapter`` for inference: a LoRA /
    DoRA adapter merged (`load_merged`), any other (prefix, prompt, bottleneck) attached."""
    if read_adapter_config(adapter)["peft_type"] == "LORA":
        return load_merged(base, adapter, dtype)
    model = load_adapter(load_model(base, dtype=torch.float32), adapter)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    return model.to(dtype) if dtype is not None else model


def adapter_base(adapter: str | os.PathLike) -> Path:
    """The base model folder adapter folder ``adapter`` records (``base_model_name_or_path``
    in adapter_config.json: a folder, absolute or relative to the working directory, or a
    Hub id found in the local Hugging Face cache)."""
    folder = Path(adapter)
    base = read_adapter_config(folder).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise AdapterError(
            f"{folder / 'adapter_config.json'}: no base_model_name_or_path; name the base model"
        )
    return resolve_model_path(base)


__all__ = ["adapter_base", "load_adapted", "load_merged"]
