"""A LoRA adapter folded into its base checkpoint: a plain model at full inference speed
(``lmforge merge``, ``lmforge serve --adapter``).

    model = load_merged("ckpt/", "runs/sft-lora/model", dtype="bfloat16")

(The module is not called ``merge``: `lmforge.peft.merge` is the in-place merge function.)
"""

from __future__ import annotations

import os

import torch
from torch import nn

from lmforge.models.hf import load_model
from lmforge.peft.io import load_adapter, read_adapter_config
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
