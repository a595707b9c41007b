"""DCGAN-style generator and discriminator for small images, class-conditional on request,
and the pair as one module the Trainer checkpoints (``config.json`` + ``model.safetensors``).

Generator (Radford et al. 2016, DCGAN): z (+ a class embedding, Mirza & Osindero 2014) →
linear to 4×4×(2^k·w) → k × [4×4 transposed conv stride 2, BatchNorm, ReLU] → 3×3 conv → tanh;
k = log₂(size/4); BatchNorm always normalises with the batch's statistics (`batch_norm`).
Discriminator (its own base width ``critic_width``, by default the generator's): k × [4×4 conv
stride 2, LeakyReLU 0.2] → linear → one logit per image; no BatchNorm (the gradient penalty is per example, Gulrajani et al. 2017 §4); the
class-conditional critic is a projection discriminator, f(x, y) = ψ(φ(x)) + ⟨e_y, φ(x)⟩
(Miyato & Koyama 2018, eq. 3). ``spectral_norm`` divides every critic weight by its largest
singular value, estimated by one power iteration per forward (Miyato et al. 2018).
Weights start at N(0, 0.02) as in DCGAN.

    pair = GANPair(GANNetConfig(image_shape=[1, 16, 16], num_classes=10))
    images = pair.generator(torch.randn(8, pair.config.z_dim), labels)
    save_gan(pair, "runs/gan/model", meta); pair, meta = load_gan("runs/gan/model")
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as add_spectral_norm

from lmforge.config import ConfigError
from lmforge.io import atomic_path, atomic_write_json, read_json

CONFIG_FILE = "config.json"

__all__ = [
    "CONFIG_FILE",
    "Discriminator",
    "GANNetConfig",
    "GANPair",
    "Generator",
    "is_gan_folder",
    "load_gan",
    "save_gan",
]


@dataclass
class GANNetConfig:
    """Both networks' shapes: image [C, H, W] (H = W a power of two ≥ 8), latent size, base
    width w of the generator and ``critic_width`` of the critic (0: w), classes (0:
    unconditional), spectral norm on the critic."""

    image_shape: list[int] = field(default_factory=lambda: [1, 16, 16])
    z_dim: int = 64
    width: int = 32
    critic_width: int = 0
    num_classes: int = 0
    spectral_norm: bool = False

    def __post_init__(self) -> None:
        c, h, w = self.image_shape
        if h != w or h < 8 or h & (h - 1):
            raise ConfigError(f"gan image_shape {self.image_shape}: square, a power of two ≥ 8")
        if self.z_dim < 1 or self.width < 1 or self.num_classes < 0 or self.critic_width < 0:
            raise ConfigError(
                f"gan network {self}: z_dim, width ≥ 1, critic_width ≥ 0 and num_classes ≥ 0"
            )

    @property
    def num_levels(self) -> int:
        return int(math.log2(self.image_shape[1] // 4))

    @property
    def critic_base(self) -> int:
        """The critic's base width: ``critic_width``, or the generator's ``width``."""
        return self.critic_width or self.width

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) conv / linear / embedding weights, N(1, 0.02) norm gains, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm on the batch's statistics in training *and* sampling (no running averages:
    DCGAN's reference code samples in training mode too), so a sample depends on the batch it
    is drawn with; there is no train/eval gap and no integer buffer in checkpoints."""
    return nn.BatchNorm2d(channels, track_running_stats=False)


class Generator(nn.Module):
    """``forward(z [B, z_dim], labels [B] | None) → images [B, C, H, W]`` in (−1, 1)."""

    def __init__(self, config: GANNetConfig) -> None:
        super().__init__()
        self.config = config
        c, size, _ = config.image_shape
        k, w = config.num_levels, config.width
        self.top = w * 2**k
        self.embed = nn.Embedding(config.num_classes, config.z_dim) if config.conditional else None
        in_dim = config.z_dim * (2 if config.conditional else 1)
        self.project = nn.Linear(in_dim, self.top * 16)
        self.norm0 = batch_norm(self.top)
        ups = []
        for i in range(k):
            cin, cout = w * 2 ** (k - i), w * 2 ** (k - i - 1)
            ups += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), batch_norm(cout), nn.ReLU()]
        self.ups = nn.Sequential(*ups)
        self.out = nn.Conv2d(w, c, 3, padding=1)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a class-conditional generator needs labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.project(z).view(z.shape[0], self.top, 4, 4)
        h = self.ups(torch.relu(self.norm0(h)))
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    """``forward(images, labels | None) → [B]`` logits (critic values for WGAN)."""

    def __init__(self, config: GANNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.image_shape[0]
        k, w = config.num_levels, config.critic_base
        layers: list[nn.Module] = []
        cin = c
        for i in range(k):
            cout = w * 2**i
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.feature_dim = cin * 16
        self.head = nn.Linear(self.feature_dim, 1)
        self.embed = (
            nn.Embedding(config.num_classes, self.feature_dim) if config.conditional else None
        )
        dcgan_init(self)
        if config.spectral_norm:
            for m in [*self.body, self.head]:
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    add_spectral_norm(m)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        phi = self.body(images).flatten(1)
        out = self.head(phi).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("a class-conditional discriminator needs labels")
            out = out + (self.embed(labels) * phi).sum(1)  # the projection term
        return out


class GANPair(nn.Module):
    """Generator and discriminator as one module: one checkpoint, one optimizer (each
    Trainer step updates one player, `lmforge.generative.gan_training`)."""

    def __init__(self, config: GANNetConfig, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.meta = dict(meta or {})
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    def save_weights_folder(self, folder: str | os.PathLike) -> Path:
        """What the Trainer's checkpoints call (`save_gan`)."""
        return save_gan(self, folder, self.meta)


def save_gan(pair: GANPair, folder: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """``config.json`` ({"lmforge_gan": network fields, "meta": …}) and ``model.safetensors``
    (both players), atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in pair.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as path:
        save_file(state, str(path), metadata={"format": "pt"})
    atomic_write_json(
        folder / CONFIG_FILE, {"lmforge_gan": pair.config.to_dict(), "meta": meta or {}}
    )
    return folder


def is_gan_folder(folder: str | os.PathLike) -> bool:
    path = Path(folder) / CONFIG_FILE
    return path.is_file() and "lmforge_gan" in read_json(path, "GAN config")


def load_gan(folder: str | os.PathLike) -> tuple[GANPair, dict[str, Any]]:
    """(the pair in eval mode, its meta) from a saved model or a Trainer checkpoint folder."""
    folder = Path(folder)
    if not is_gan_folder(folder):
        raise ConfigError(f"{folder}: no {CONFIG_FILE} with 'lmforge_gan' (not a saved GAN)")
    raw = read_json(folder / CONFIG_FILE, "GAN config")
    try:
        config = GANNetConfig(**raw["lmforge_gan"])
    except TypeError as exc:
        raise ConfigError(f"{folder / CONFIG_FILE}: {exc}") from None
    pair = GANPair(config, raw.get("meta", {}))
    pair.load_state_dict(load_file(str(folder / "model.safetensors")))
    return pair.eval(), pair.meta
