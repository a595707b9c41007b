"""The KL autoencoder: the closed-form KL against torch.distributions, the reparameterised
sample, shapes, a save/load round trip, and that a few steps of the objective lower it."""

from __future__ import annotations

import torch

from lmforge.diffusion.autoencoder_kl import (
    AutoencoderKL,
    AutoencoderKLConfig,
    AutoencoderKLObjective,
    DiagonalGaussian,
    kl_divergence,
    load_autoencoder,
    save_autoencoder,
)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    want = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(kl_divergence(mean, logvar), want)
    assert torch.all(kl_divergence(torch.zeros(2, 5), torch.zeros(2, 5)) == 0)


def test_posterior_sample_is_reparameterised():
    moments = torch.cat([torch.full((2, 1, 1, 1), 3.0), torch.full((2, 1, 1, 1), 2.0)], 1)
    post = DiagonalGaussian(moments)  # mean 3, log σ² = 2
    eps = torch.randn((2, 1, 1, 1), generator=torch.Generator().manual_seed(1))
    z = post.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(z, 3.0 + torch.exp(torch.tensor(1.0)) * eps)


def test_shapes_round_trip_and_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    cfg = AutoencoderKLConfig(in_channels=3, latent_channels=4, channels=8, norm_groups=4)
    ae = AutoencoderKL(cfg)
    ramp = torch.linspace(-1, 1, 8)
    x = (
        ramp.view(1, 1, 8, 1)
        * ramp.view(8, 1, 1, 1)
        * torch.tensor([1.0, -0.5, 0.3]).view(1, 3, 1, 1)
    )
    x = x.expand(8, 3, 8, 8).contiguous()  # smooth images: a product of ramps per channel
    post = ae.encode(x)
    assert post.mean.shape == (8, 4, 4, 4) and ae.latent_shape((3, 8, 8)) == (4, 4, 4)
    assert ae.decode(post.mean).shape == x.shape
    objective = AutoencoderKLObjective()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        out = objective(ae, {"images": x})
        loss = out.loss_sum / out.count
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
    assert set(out.metrics) == {"l1", "mse", "kl"}
    ae.config.scaling_factor = 0.5
    folder = save_autoencoder(ae.eval(), tmp_path / "ae")
    back = load_autoencoder(folder)
    assert back.config == ae.config
    torch.testing.assert_close(back.latents(x), ae.latents(x))
    torch.testing.assert_close(back.latents(x), ae.encode(x).mean * 0.5)
    torch.testing.assert_close(
        back.images(back.latents(x)), ae.decode(ae.encode(x).mean).clamp(-1, 1)
    )
