"""VQGAN's adversary: a PatchGAN discriminator, the hinge losses, and the adaptive weight.

- PatchGAN (Isola et al. 2017, §3.2.2): a fully convolutional net whose output is a map of
  real/fake logits, one per overlapping image patch (its receptive field), so it judges local
  texture and leaves global structure to the reconstruction loss;
- hinge losses (Lim & Ye 2017; VQGAN's choice): L_D = ½[E relu(1 − D(x)) + E relu(1 + D(x̂))],
  L_G = −E D(x̂);
- adaptive weight (Esser et al. 2021, eq. 7): λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ),
  gradients at the decoder's last layer G_L, so the adversarial term never swamps the
  reconstruction term whatever their scales; λ is a constant (no gradient flows through it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchDiscriminator", "adaptive_weight", "hinge_d_loss", "hinge_g_loss"]


class PatchDiscriminator(nn.Module):
    """Conv(4, stride 2) → LeakyReLU(0.2), then ``layers − 1`` conv(4, stride 2 while the map
    is larger than 4) + GroupNorm + LeakyReLU, then a conv(3) to one logit per patch."""

    def __init__(self, channels: int, width: int = 32, layers: int = 2, image_size: int = 16):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        size, c = image_size // 2, width
        for _ in range(layers - 1):
            stride = 2 if size > 4 else 1
            nxt = min(4 * width, 2 * c)
            conv = nn.Conv2d(c, nxt, 4 if stride == 2 else 3, stride, 1)
            mods += [conv, nn.GroupNorm(min(8, nxt), nxt), nn.LeakyReLU(0.2)]
            size, c = size // stride, nxt
        mods.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] → [B, 1, h, w] patch logits."""
        return self.net(images)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½[mean relu(1 − D(x)) + mean relu(1 + D(x̂))]."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """−mean D(x̂): the generator raises the discriminator's score of its images."""
    return -logits_fake.mean()


def adaptive_weight(
    rec_loss: torch.Tensor,
    gan_loss: torch.Tensor,
    last_layer: torch.Tensor,
    delta: float = 1e-4,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ), clamped to [0, ``max_weight``] and
    detached (VQGAN eq. 7). Both losses must depend on ``last_layer`` (the decoder's final
    weight); the graphs are kept for the real backward pass."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = g_rec.norm() / (g_gan.norm() + delta)
    return weight.clamp(0.0, max_weight).detach()
