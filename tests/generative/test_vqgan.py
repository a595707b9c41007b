"""VQGAN: shapes, codes → images, save/load, PSNR by hand, and the one-optimizer game — each
player's gradient is exactly the gradient of its own loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from lmforge.config import ConfigError
from lmforge.generative.patch_discriminator import adaptive_weight, hinge_d_loss, hinge_g_loss
from lmforge.generative.vqgan import (
    VQGAN,
    VQGANConfig,
    VQGANObjective,
    is_vqgan_folder,
    load_vqgan,
    psnr,
    save_vqgan,
)

TINY = dict(channels=1, image_size=8, hidden=[8, 16], num_codes=8, code_dim=4, disc_width=8)


def test_shapes_codes_and_decoding():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(**TINY)).eval()
    x = torch.randn(3, 1, 8, 8)
    x_rec, q = model(x)
    assert x_rec.shape == x.shape and q.indices.shape == (3, 2, 2) == (3, *model.config.grid)
    assert torch.allclose(model.decode_codes(q.indices), x_rec, atol=1e-5)
    assert model.discriminator(x).shape[:2] == (3, 1)
    with pytest.raises(ConfigError, match="not divisible"):
        VQGANConfig(image_size=12, hidden=[8, 8, 8])


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(**TINY)).train()
    model(torch.randn(4, 1, 8, 8))  # data init + EMA statistics
    folder = save_vqgan(model, tmp_path / "m", {"dataset": "digits"})
    assert is_vqgan_folder(folder) and not is_vqgan_folder(tmp_path)
    loaded = load_vqgan(folder)
    assert loaded.meta == {"dataset": "digits"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model.eval()(x)[0], loaded(x)[0])


def test_psnr_by_hand():
    x = torch.zeros(2, 1, 2, 2)
    y = torch.full((2, 1, 2, 2), 0.1)
    assert torch.allclose(psnr(x, y), torch.full((2,), 10 * math.log10(4 / 0.01)))


def test_each_player_gets_exactly_its_own_gradient():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(**TINY, ema=True)).train()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    model(x)  # initialise the codebook first, so both passes below quantise alike
    objective = VQGANObjective(None, disc_weight=0.7, disc_start=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    out = objective(model, {"images": x})
    out.loss_sum.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.load_state_dict(state)  # the EMA update of the first call undone

    # independently: the generator's loss (D's parameters as constants) and D's own loss
    torch.manual_seed(1)
    x_rec, q = model(x)
    rec = (x - x_rec).abs().mean()
    disc = model.discriminator
    g_adv = hinge_g_loss(
        functional_call(disc, {k: v.detach() for k, v in disc.named_parameters()}, (x_rec,))
    )
    lam = adaptive_weight(rec, g_adv, model.last_layer)
    gen_loss = rec + 0.25 * q.commitment_loss + 0.7 * lam * g_adv
    d_loss = hinge_d_loss(disc(x), disc(x_rec.detach()))
    gen_params = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and not n.startswith("discriminator.")
    ]
    d_params = list(disc.parameters())
    g_grads = torch.autograd.grad(gen_loss, gen_params, retain_graph=True, allow_unused=True)
    d_grads = torch.autograd.grad(d_loss, d_params)
    names = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and not n.startswith("discriminator.")
    ]
    b = x.shape[0]
    for name, g in zip(names, g_grads):
        if g is not None:
            assert torch.allclose(got[name], b * g, atol=1e-5, rtol=1e-4), name
    for (name, _), g in zip(disc.named_parameters(), d_grads):
        assert torch.allclose(got[f"discriminator.{name}"], b * g, atol=1e-5, rtol=1e-4), name
    assert {"g_loss", "d_loss", "adaptive_weight"} <= set(out.metrics)


def test_adversarial_terms_wait_for_disc_start_and_skip_validation():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(**TINY)).train()
    x = torch.randn(2, 1, 8, 8)
    objective = VQGANObjective(None, disc_start=5)
    objective.step_fn = lambda: 4
    assert "d_loss" not in objective(model, {"images": x}).metrics
    objective.step_fn = lambda: 5
    assert "d_loss" in objective(model, {"images": x}).metrics
    model.eval()
    with torch.no_grad():
        out = objective(model, {"images": x})
    assert "d_loss" not in out.metrics and out.count == 2 and "psnr" in out.metrics
