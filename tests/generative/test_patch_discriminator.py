"""PatchGAN output shape, hinge losses by hand, and VQGAN's adaptive weight against
gradient norms computed independently with ``backward``."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.generative.patch_discriminator import (
    PatchDiscriminator,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
)


def test_patch_discriminator_gives_a_map_of_patch_logits():
    d = PatchDiscriminator(3, width=8, layers=2, image_size=16)
    out = d(torch.randn(5, 3, 16, 16))
    assert out.shape == (5, 1, 4, 4)
    d8 = PatchDiscriminator(1, width=8, layers=3, image_size=8)
    assert d8(torch.randn(2, 1, 8, 8)).shape == (2, 1, 4, 4)


def test_hinge_losses_match_hand_computation():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-3.0, 0.0, 0.5])
    want_d = 0.5 * ((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 1.5) / 3)
    assert math.isclose(hinge_d_loss(real, fake).item(), want_d, rel_tol=1e-6)
    assert math.isclose(hinge_g_loss(fake).item(), -(-3.0 + 0.0 + 0.5) / 3, rel_tol=1e-6)


def test_adaptive_weight_is_the_ratio_of_last_layer_gradient_norms():
    torch.manual_seed(0)
    body, last = nn.Linear(4, 6), nn.Linear(6, 3)
    critic = nn.Linear(3, 1)
    x, target = torch.randn(5, 4), torch.randn(5, 3)

    def losses():
        out = last(torch.tanh(body(x)))
        return (out - target).abs().mean(), -critic(out).mean()

    # independently: two fresh graphs, backward, read .grad
    rec, _ = losses()
    rec.backward()
    g_rec = last.weight.grad.norm().item()
    last.weight.grad = None
    _, gan = losses()
    gan.backward()
    g_gan = last.weight.grad.norm().item()
    last.weight.grad = None
    for p in (*body.parameters(), *critic.parameters(), last.bias):
        p.grad = None
    rec, gan = losses()
    lam = adaptive_weight(rec, gan, last.weight, delta=1e-4)
    assert math.isclose(lam.item(), g_rec / (g_gan + 1e-4), rel_tol=1e-5)
    assert not lam.requires_grad
    (rec + lam * gan).backward()  # the graphs were kept for the real backward
    assert last.weight.grad is not None
    rec, gan = losses()
    assert adaptive_weight(rec, 0 * gan, last.weight, delta=1e-8, max_weight=7.0).item() == 7.0
