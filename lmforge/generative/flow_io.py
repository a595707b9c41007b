"""A normalizing flow on disk: ``config.json`` + ``model.safetensors``.

    <model>/config.json         {"lmforge_flow": "nice" | "realnvp", **NICEConfig / RealNVPConfig
                                 fields, "meta": {dataset, data_seed, image_shape, ...}}
    <model>/model.safetensors   the state dict (masks included)

The same layout is what the Trainer's checkpoints hold (the models' ``save_weights_folder``),
so a checkpoint folder loads like a saved model (`lmforge.generative.flow_training.load_flow`
builds the network back).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from lmforge.config import ConfigError
from lmforge.io import atomic_path, atomic_write_json, read_json

CONFIG_FILE = "config.json"

__all__ = ["CONFIG_FILE", "is_flow_folder", "read_flow_config", "save_flow"]


def save_flow(
    model: nn.Module, folder: str | os.PathLike, meta: dict[str, Any] | None = None
) -> Path:
    """Write the folder of the module docstring (atomic files); ``model.kind`` names it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as path:
        save_file(state, str(path), metadata={"format": "pt"})
    config = {"lmforge_flow": model.kind, **model.config.to_dict(), "meta": meta or {}}
    atomic_write_json(folder / CONFIG_FILE, config)
    return folder


def is_flow_folder(folder: str | os.PathLike) -> bool:
    path = Path(folder) / CONFIG_FILE
    return path.is_file() and "lmforge_flow" in read_json(path, "flow config")


def read_flow_config(folder: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(kind, network config fields, meta) of a saved flow."""
    folder = Path(folder)
    if not is_flow_folder(folder):
        raise ConfigError(f"{folder}: no {CONFIG_FILE} with 'lmforge_flow' (not a saved flow)")
    raw = read_json(folder / CONFIG_FILE, "flow config")
    kind, meta = raw.pop("lmforge_flow"), raw.pop("meta", {})
    return kind, raw, meta
