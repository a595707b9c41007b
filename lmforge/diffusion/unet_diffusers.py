"""The UNet ↔ diffusers ``UNet2DModel``: config translation, weights (same names), folders.

    export_unet(model, "out/unet")          # config.json + diffusion_pytorch_model.safetensors
    UNet2DModel.from_pretrained("out/unet")  # same outputs (tests/diffusion/test_unet_diffusers.py)
    model = import_unet("some/unet")        # and back

What maps: positional (sinusoidal) time embedding with ``flip_sin_to_cos`` / ``freq_shift``;
``DownBlock2D``/``AttnDownBlock2D`` and ``UpBlock2D``/``AttnUpBlock2D`` with conv
down/up-sampling; ``UNetMidBlock2D`` with or without attention; SiLU; class conditioning by
``nn.Embedding`` (``num_class_embeds`` = classes + 1, the extra row being lmforge's
classifier-free-guidance "no class"). What does not (refused on import with the key named):
Fourier or learned time embeddings, ``center_input_sample``, ``time_embedding_dim`` other than
4 × the first width, ``mid_block_scale_factor`` ≠ 1, resnet/ResNet-style up/down sampling
(``downsample_type``/``upsample_type`` ≠ conv), skip blocks (``SkipDownBlock2D``…),
``resnet_time_scale_shift`` ≠ default, ``attn_norm_num_groups``, activations other than
SiLU, class embeddings of type timestep/identity, and ``downsample_padding`` ≠ 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmforge.config import ConfigError
from lmforge.diffusion.scheduler_base import DIFFUSERS_VERSION
from lmforge.io import atomic_path, atomic_write_json, read_json

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

__all__ = [
    "WEIGHTS_NAME",
    "export_unet",
    "from_diffusers_config",
    "import_unet",
    "to_diffusers_config",
]

# keys whose value must be the default for the architecture to map
_REQUIRED = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "act_fn": "silu",
    "attn_norm_num_groups": None,
    "resnet_time_scale_shift": "default",
    "class_embed_type": None,
}


def to_diffusers_config(config) -> dict[str, Any]:
    """``UNet2DModel``'s config for a `UNetConfig`."""
    levels = list(config.attention_levels)
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": config.sample_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "freq_shift": config.freq_shift,
        "flip_sin_to_cos": config.flip_sin_to_cos,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in levels],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in levels[::-1]],
        "mid_block_type": "UNetMidBlock2D",
        "block_out_channels": list(config.block_out_channels),
        "layers_per_block": config.layers_per_block,
        "dropout": config.dropout,
        "attention_head_dim": config.attention_head_dim,
        "norm_num_groups": config.norm_num_groups,
        "norm_eps": config.norm_eps,
        "add_attention": config.mid_attention,
        "num_class_embeds": None if config.num_classes is None else config.num_classes + 1,
        **_REQUIRED,
    }


def from_diffusers_config(raw: dict[str, Any], where: str = "<config>"):
    """A `UNetConfig` from ``UNet2DModel``'s config; unmappable settings are a `ConfigError`."""
    from lmforge.diffusion.unet import UNetConfig

    for key, want in _REQUIRED.items():
        if raw.get(key, want) != want:
            raise ConfigError(f"{where}: {key}={raw[key]!r} has no lmforge UNet equivalent")
    down = list(raw.get("down_block_types", ()))
    up = list(raw.get("up_block_types", ()))
    levels = []
    for name in down:
        if name not in ("DownBlock2D", "AttnDownBlock2D"):
            raise ConfigError(f"{where}: down_block_types entry {name!r} is not supported")
        levels.append(name == "AttnDownBlock2D")
    want_up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in levels[::-1]]
    if up != want_up:
        raise ConfigError(f"{where}: up_block_types {up} must mirror down_block_types ({want_up})")
    if raw.get("mid_block_type", "UNetMidBlock2D") != "UNetMidBlock2D":
        raise ConfigError(f"{where}: mid_block_type {raw['mid_block_type']!r} is not supported")
    head_dim = raw.get("attention_head_dim", 8)
    if head_dim is None:
        head_dim = raw["block_out_channels"][-1]
    classes = raw.get("num_class_embeds")
    size = raw.get("sample_size") or 32
    return UNetConfig(
        sample_size=size if isinstance(size, int) else size[0],
        in_channels=raw.get("in_channels", 3),
        out_channels=raw.get("out_channels", 3),
        block_out_channels=list(raw["block_out_channels"]),
        attention_levels=levels,
        layers_per_block=raw.get("layers_per_block", 2),
        attention_head_dim=head_dim,
        norm_num_groups=raw.get("norm_num_groups", 32),
        norm_eps=raw.get("norm_eps", 1e-5),
        dropout=raw.get("dropout", 0.0),
        num_classes=None if classes is None else classes - 1,
        flip_sin_to_cos=raw.get("flip_sin_to_cos", True),
        freq_shift=raw.get("freq_shift", 0),
        mid_attention=raw.get("add_attention", True),
    )


def export_unet(model, folder: str | os.PathLike) -> Path:
    """Write ``model`` as a diffusers ``UNet2DModel`` folder (atomic files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as path:
        save_file(state, str(path), metadata={"format": "pt"})
    atomic_write_json(folder / "config.json", to_diffusers_config(model.config))
    return folder


def import_unet(folder: str | os.PathLike):
    """A `UNet` from a diffusers ``UNet2DModel`` folder (or one `export_unet` wrote)."""
    from lmforge.diffusion.unet import UNet

    folder = Path(folder)
    raw = read_json(folder / "config.json", "UNet2DModel config")
    model = UNet(from_diffusers_config(raw, str(folder / "config.json")))
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ConfigError(f"{folder}: no {WEIGHTS_NAME}")
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{weights}: weights do not match the config (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]})"
        )
    return model.to(torch.float32)
