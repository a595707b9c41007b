"""A trained denoiser on disk: a diffusers-pipeline-shaped folder.

    <model>/
        model_index.json            DDPMPipeline (UNet with a VP scheduler): diffusers loads it
        unet/config.json            UNet2DModel config (`unet_diffusers`) ...
        unet/diffusion_pytorch_model.safetensors
        dit/config.json + model.safetensors        (a DiT instead: lmforge's own layout)
        scheduler/scheduler_config.json            the training noise schedule
        denoiser.json               lmforge: target, image shape, classes, dataset

``load_denoiser`` returns a `Denoiser` bundle; ``build_denoiser`` makes a fresh network from
a kind and its config dict.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from lmforge.config import ConfigError
from lmforge.diffusion.scheduler_base import DIFFUSERS_VERSION, Scheduler
from lmforge.diffusion.schedulers import load_scheduler
from lmforge.diffusion.unet import UNet, UNetConfig, save_weights
from lmforge.diffusion.unet_diffusers import export_unet, import_unet
from lmforge.io import atomic_write_json, read_json

META_FILE = "denoiser.json"

__all__ = [
    "META_FILE",
    "Denoiser",
    "build_denoiser",
    "denoiser_device",
    "load_denoiser",
    "save_denoiser",
]


@dataclass
class Denoiser:
    """A network, its training scheduler and what it was trained on."""

    model: nn.Module
    scheduler: Scheduler
    target: str
    image_shape: tuple[int, int, int]
    class_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def conditional(self) -> bool:
        return getattr(self.model, "null_class", None) is not None


def build_denoiser(kind: str, config: dict[str, Any]) -> nn.Module:
    """A fresh ``unet`` or ``dit`` from its config fields."""
    if kind == "unet":
        return UNet(UNetConfig(**config))
    if kind == "dit":
        from lmforge.diffusion.dit import DiT, DiTConfig

        return DiT(DiTConfig(**config))
    raise ConfigError(f"denoiser {kind!r}: expected unet or dit")


def save_denoiser(d: Denoiser, folder: str | os.PathLike) -> Path:
    """Write the folder described in the module docstring (atomic files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kind = "unet" if isinstance(d.model, UNet) else "dit"
    if kind == "unet":
        export_unet(d.model, folder / "unet")
    else:
        save_weights(d.model, "dit", folder / "dit")
    d.scheduler.save_config(folder / "scheduler")
    if kind == "unet" and d.target != "flow":
        atomic_write_json(
            folder / "model_index.json",
            {
                "_class_name": "DDPMPipeline",
                "_diffusers_version": DIFFUSERS_VERSION,
                "unet": ["diffusers", "UNet2DModel"],
                "scheduler": ["diffusers", d.scheduler.class_name],
            },
        )
    meta = {
        **d.meta,
        "kind": kind,
        "target": d.target,
        "image_shape": list(d.image_shape),
        "class_names": d.class_names,
    }
    atomic_write_json(folder / META_FILE, meta)
    return folder


def load_denoiser(folder: str | os.PathLike) -> Denoiser:
    """Read what `save_denoiser` wrote."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise ConfigError(f"{folder}: no {META_FILE} (not a denoiser saved by lmforge)")
    meta = read_json(folder / META_FILE, "denoiser metadata")
    if meta.get("kind") == "dit":
        raw = json.loads((folder / "dit" / "config.json").read_text(encoding="utf-8"))
        raw.pop("lmforge_denoiser", None)
        model = build_denoiser("dit", raw)
        model.load_state_dict(load_file(str(folder / "dit" / "model.safetensors")))
    else:
        model = import_unet(folder / "unet")
    model.eval()
    scheduler = load_scheduler(folder / "scheduler")
    return Denoiser(
        model,
        scheduler,
        meta["target"],
        tuple(meta["image_shape"]),
        list(meta.get("class_names", [])),
        {k: v for k, v in meta.items() if k not in ("target", "image_shape", "class_names")},
    )


def denoiser_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
