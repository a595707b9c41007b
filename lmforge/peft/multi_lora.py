"""Several LoRA adapters served at once, chosen per token inside one batch (Punica / S-LoRA's
idea, "Serving Thousands of Concurrent LoRA Adapters", Sheng et al. 2023, without the
custom kernels): the adapters stay unmerged in each `LoraLinear`, a `LoraRouter` shared by all
layers holds one adapter index per token of the next forward, and each layer adds
``y_t += s_i · B_i A_i x_t`` (eq. 3 of Hu et al. 2021) for the adapter i of token t only.

    >>> router = load_lora_router(model, {"sql": "runs/sql-lora/model", "chat": "runs/chat"})
    >>> engine = Engine(model, tok, adapters=router)          # lmforge.infer
    >>> engine.add_request(ids, params, adapter=router.index("sql"))

Index 0 is the base model; adapter ``names[i - 1]`` is index i. DoRA adapters (whose
magnitude rescales the whole output) are refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lmforge.peft.io import load_adapter
from lmforge.peft.lora import lora_layers

__all__ = ["LoraRouter", "attach_router", "load_lora_router"]


class LoraRouter:
    """Which adapter each token of the next forward uses (see the module docstring)."""

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique, got {list(names)}")
        self.names = list(names)
        self.token_adapters: torch.Tensor | None = None

    @property
    def num_adapters(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """The index of adapter ``name`` (1-based; 0 is the base model)."""
        if name not in self.names:
            raise KeyError(f"no adapter named {name!r}; have {self.names}")
        return self.names.index(name) + 1

    def name_of(self, index: int) -> str | None:
        return None if index == 0 else self.names[index - 1]

    def select(self, token_adapters: torch.Tensor | None) -> None:
        """Adapter indices for the tokens of the next forward (None: the base model)."""
        if token_adapters is not None:
            bad = (token_adapters < 0) | (token_adapters > self.num_adapters)
            if bool(bad.any()):
                raise ValueError(f"adapter indices must be in [0, {self.num_adapters}]")
        self.token_adapters = token_adapters


def attach_router(model: nn.Module, names: Sequence[str]) -> LoraRouter:
    """Route the adapters ``names`` the model already carries (`lmforge.peft.load_adapter`)
    per token; returns the router every `LoraLinear` of the model now reads."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to route")
    for name in names:
        if not any(name in layer.lora_A for layer in layers.values()):
            raise ValueError(f"no LoRA layer carries an adapter named {name!r}")
    for where, layer in layers.items():
        dora = [n for n in names if n in layer.lora_magnitude_vector]
        if dora:
            raise ValueError(f"{where}: DoRA adapter {dora[0]!r} cannot be served per request")
        if layer.merged:
            raise ValueError(f"{where}: adapters {layer.merged} are merged into the weights")
    router = LoraRouter(names)
    for layer in layers.values():
        layer.router = router
    return router


def load_lora_router(model: nn.Module, adapters: Mapping[str, str | os.PathLike]) -> LoraRouter:
    """Load each PEFT-format LoRA adapter folder of ``adapters`` (name → folder) into
    ``model`` under its name and route them per token (`attach_router`)."""
    for name, folder in adapters.items():
        load_adapter(model, folder, adapter_name=name)
    return attach_router(model, list(adapters))
