"""VQGAN (Esser et al. 2021): a conv encoder, the vector quantiser, a conv decoder and a
PatchGAN discriminator, and its training objective for the one Trainer.

    model = VQGAN(VQGANConfig(channels=1, hidden=[32, 64], num_codes=64, code_dim=16))
    x_rec, q = model(x)                 # q.indices [B, h, w]: 16×16 images → 4×4 codes
    model.decode_codes(q.indices)       # codes → images (what the transformer prior samples)

The objective (VQGAN eq. 4–7, with VQ-VAE eq. 3) per batch:

    L_rec = |x − x̂|₁ + w_p · P(x, x̂)                    (P: `lmforge.generative.perceptual`)
    L_VQ  = ‖sg[z] − e‖² (only without EMA) + β‖z − sg[e]‖²
    L_G   = L_rec + L_VQ + w_d · λ · (−D(x̂)),  λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ)
    L_D   = ½[relu(1 − D(x)) + relu(1 + D(sg[x̂]))]     (after ``disc_start`` steps)

The discriminator is a second player trained on its own loss. The one Trainer has one
optimizer, so both play in one step: the loss handed to it is L_G + L_D where L_G sees the
discriminator through *detached* parameters (`torch.func.functional_call`) and L_D sees the
generator's images detached — one backward pass gives each player exactly the gradient of its
own loss, and AdamW updates both simultaneously (simultaneous gradient play, as opposed to
taming-transformers' alternating two optimizers; no Trainer change is needed, and exact
resume covers both players' weights and moments).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from lmforge.config import ConfigError
from lmforge.generative.patch_discriminator import (
    PatchDiscriminator,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
)
from lmforge.generative.perceptual import PerceptualLoss
from lmforge.generative.vq import VectorQuantizer, codebook_perplexity, codebook_usage
from lmforge.io import atomic_path, atomic_write_json, read_json
from lmforge.train.objective import LossOutput

__all__ = [
    "VQGAN",
    "Decoder",
    "Encoder",
    "ResBlock",
    "VQGANConfig",
    "VQGANObjective",
    "is_vqgan_folder",
    "load_vqgan",
    "psnr",
    "save_vqgan",
]

CONFIG_FILE = "config.json"


@dataclass
class VQGANConfig:
    """Network shape: ``len(hidden)`` stride-2 stages (16×16 → 4×4 with two), a codebook of
    ``num_codes`` vectors of ``code_dim``; quantiser and discriminator settings."""

    channels: int = 1
    image_size: int = 16
    hidden: list[int] = field(default_factory=lambda: [32, 64])
    num_codes: int = 64
    code_dim: int = 16
    ema: bool = True
    decay: float = 0.99
    dead_threshold: float = 0.05  # running usage (1 = uniform share) below which a code restarts
    commitment: float = 0.25  # β
    disc_width: int = 32
    disc_layers: int = 2  # 0: no discriminator (a plain VQ-VAE)

    def __post_init__(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"vqgan.network.hidden={self.hidden}: one width ≥ 1 per stage")
        if self.image_size % (2 ** len(self.hidden)):
            raise ConfigError(
                f"vqgan.network: image_size {self.image_size} is not divisible by "
                f"2^{len(self.hidden)} (one halving per entry of hidden={self.hidden})"
            )
        if self.num_codes < 2 or self.code_dim < 1:
            raise ConfigError("vqgan.network: num_codes must be ≥ 2 and code_dim ≥ 1")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // 2 ** len(self.hidden)
        return side, side


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    """Per stage: conv(stride 2) to its width + a residual block; then norm, SiLU and a 1×1
    conv to ``code_dim``."""

    def __init__(self, c: VQGANConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(c.channels, c.hidden[0], 3, padding=1)]
        prev = c.hidden[0]
        for width in c.hidden:
            layers += [nn.Conv2d(prev, width, 4, stride=2, padding=1), ResBlock(width)]
            prev = width
        layers += [norm(prev), nn.SiLU(), nn.Conv2d(prev, c.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """The encoder mirrored: 1×1 conv up from ``code_dim``, per stage a residual block, ×2
    nearest upsampling and a conv; ``conv_out`` (norm, SiLU, conv) is the last layer G_L."""

    def __init__(self, c: VQGANConfig) -> None:
        super().__init__()
        widths = list(reversed(c.hidden))
        layers: list[nn.Module] = [nn.Conv2d(c.code_dim, widths[0], 1)]
        for i, width in enumerate(widths):
            nxt = widths[i + 1] if i + 1 < len(widths) else c.hidden[0]
            layers += [
                ResBlock(width),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width, nxt, 3, padding=1),
            ]
        self.net = nn.Sequential(*layers, norm(c.hidden[0]), nn.SiLU())
        self.conv_out = nn.Conv2d(c.hidden[0], c.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.net(z))


class VQGAN(nn.Module):
    """Encoder → `VectorQuantizer` → decoder, and the `PatchDiscriminator` (module doc)."""

    kind = "vqgan"

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(
            config.num_codes, config.code_dim, ema=config.ema, decay=config.decay,
            dead_threshold=config.dead_threshold,
        )  # fmt: skip
        self.decoder = Decoder(config)
        self.discriminator = None
        if config.disc_layers > 0:
            self.discriminator = PatchDiscriminator(
                config.channels, config.disc_width, config.disc_layers, config.image_size
            )

    @property
    def last_layer(self) -> torch.Tensor:
        """G_L: the decoder's final conv weight (where λ compares gradient norms)."""
        return self.decoder.conv_out.weight

    def encode(self, images: torch.Tensor):
        """Images → `VQOutput` (``indices`` [B, h, w] are the codes)."""
        return self.quantizer(self.encoder(images))

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] → images [B, C, H, W] (unclamped)."""
        return self.decoder(self.quantizer.embed(indices))

    def forward(self, images: torch.Tensor):
        q = self.encode(images)
        return self.decoder(q.quantized), q

    def save_weights_folder(self, folder: str | os.PathLike) -> Path:
        """What the Trainer's checkpoints call: the `save_vqgan` layout."""
        return save_vqgan(self, folder)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[B] peak signal-to-noise ratio in dB of images in [-1, 1]: 10 log₁₀(2² / MSE)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp(min=1e-12)
    return 10 * torch.log10(4.0 / mse)


class VQGANObjective:
    """``objective(model, {"images"}) -> LossOutput(Σ per-image loss, B)`` of the module
    docstring. ``step_fn`` (set by the trainer: ``lambda: trainer.step``) gates the
    adversarial terms on ``disc_start``; validation reports the reconstruction metrics."""

    validation_metrics = True

    def __init__(
        self,
        perceptual: PerceptualLoss | None = None,
        perceptual_weight: float = 1.0,
        disc_weight: float = 0.5,
        disc_start: int = 0,
    ) -> None:
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.step_fn = lambda: 0

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        vqgan: VQGAN = getattr(model, "module", model)
        x = batch["images"]
        x_rec, q = model(x)
        l1 = (x - x_rec).abs().mean()
        rec = l1
        metrics: dict[str, Any] = {"l1": l1.detach()}
        if self.perceptual is not None and self.perceptual_weight > 0:
            p = self.perceptual(x, x_rec)
            rec = rec + self.perceptual_weight * p
            metrics["perceptual"] = p.detach()
        beta = vqgan.config.commitment
        vq_loss = beta * q.commitment_loss + (0 if vqgan.config.ema else q.codebook_loss)
        loss = rec + vq_loss
        metrics.update(
            commitment=q.commitment_loss.detach(),
            codebook=q.codebook_loss.detach(),
            code_perplexity=codebook_perplexity(q.counts),
            code_usage=codebook_usage(q.counts),
        )
        training = model.training and torch.is_grad_enabled()
        if training and self.adversarial_on(vqgan):
            loss = loss + self.adversarial_terms(vqgan, x, x_rec, rec, metrics)
        b = x.shape[0]
        sums = {k: v * b for k, v in metrics.items()}
        sums["psnr"] = psnr(x, x_rec.detach()).sum()
        if training:
            sums["codes_restarted"] = float(q.restarted) * b
        return LossOutput(loss * b, b, sums)

    def adversarial_on(self, vqgan: VQGAN) -> bool:
        on = vqgan.discriminator is not None and self.disc_weight > 0
        return on and self.step_fn() >= self.disc_start

    def adversarial_terms(self, vqgan: VQGAN, x, x_rec, rec, metrics) -> torch.Tensor:
        """w_d·λ·L_GAN (generator side, the discriminator's weights detached) + L_D (the
        generator's images detached); fills ``metrics``."""
        disc = vqgan.discriminator
        frozen = {k: v.detach() for k, v in disc.named_parameters()}
        g_loss = hinge_g_loss(functional_call(disc, frozen, (x_rec,)))
        lam = adaptive_weight(rec, g_loss, vqgan.last_layer)
        logits_real, logits_fake = disc(x), disc(x_rec.detach())
        d_loss = hinge_d_loss(logits_real, logits_fake)
        metrics.update(
            g_loss=g_loss.detach(), d_loss=d_loss.detach(), adaptive_weight=lam,
            logits_real=logits_real.detach().mean(), logits_fake=logits_fake.detach().mean(),
        )  # fmt: skip
        return self.disc_weight * lam * g_loss + d_loss


def save_vqgan(model: VQGAN, folder: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """``config.json`` ({"lmforge_vqgan": 1, network fields, "meta"}) + ``model.safetensors``
    (the whole state: weights, EMA codebook statistics, usage), atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as path:
        save_file(state, str(path), metadata={"format": "pt"})
    meta = meta if meta is not None else getattr(model, "meta", {})
    atomic_write_json(folder / CONFIG_FILE, {"lmforge_vqgan": 1, **asdict(model.config),
                                             "meta": meta})  # fmt: skip
    return folder


def is_vqgan_folder(folder: str | os.PathLike) -> bool:
    path = Path(folder) / CONFIG_FILE
    return path.is_file() and "lmforge_vqgan" in read_json(path, "vqgan config")


def load_vqgan(folder: str | os.PathLike) -> VQGAN:
    """A saved VQGAN (or a Trainer checkpoint of one) in eval mode; ``model.meta`` holds the
    dataset description saved with it."""
    folder = Path(folder)
    if not is_vqgan_folder(folder):
        raise ConfigError(f"{folder}: no {CONFIG_FILE} with 'lmforge_vqgan' (not a saved VQGAN)")
    raw = read_json(folder / CONFIG_FILE, "vqgan config")
    raw.pop("lmforge_vqgan")
    meta = raw.pop("meta", {})
    model = VQGAN(VQGANConfig(**raw))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.meta = meta
    return model.eval()
