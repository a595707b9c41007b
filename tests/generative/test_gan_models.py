"""DCGAN generator / discriminator shapes, the projection term, spectral norm, save/load."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import ConfigError
from lmforge.generative.gan_models import (
    GANNetConfig,
    GANPair,
    is_gan_folder,
    load_gan,
    save_gan,
)


@pytest.mark.parametrize("size, channels", [(8, 1), (16, 3), (32, 1)])
def test_shapes_and_range(size, channels):
    torch.manual_seed(0)
    pair = GANPair(GANNetConfig([channels, size, size], z_dim=8, width=4, num_classes=3))
    labels = torch.tensor([0, 2, 1])
    images = pair.generator(torch.randn(3, 8), labels)
    assert images.shape == (3, channels, size, size)
    assert images.abs().max() < 1
    assert pair.discriminator(images, labels).shape == (3,)
    with pytest.raises(ValueError, match="needs labels"):
        pair.generator(torch.randn(3, 8))


def test_critic_width_sizes_the_critic_only():
    same = GANPair(GANNetConfig([1, 16, 16], z_dim=8, width=4, num_classes=3))
    wide = GANPair(GANNetConfig([1, 16, 16], z_dim=8, width=4, critic_width=8, num_classes=3))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(wide.generator) == count(same.generator)
    assert [m.out_channels for m in wide.discriminator.body if hasattr(m, "out_channels")] == [
        8,
        16,
    ]
    assert [m.out_channels for m in same.discriminator.body if hasattr(m, "out_channels")] == [4, 8]
    assert wide.discriminator(torch.zeros(2, 1, 16, 16), torch.tensor([0, 2])).shape == (2,)
    with pytest.raises(ConfigError, match="critic_width"):
        GANNetConfig([1, 16, 16], critic_width=-1)


def test_bad_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="power of two"):
        GANNetConfig([1, 12, 12])
    with pytest.raises(ConfigError, match="square"):
        GANNetConfig([1, 16, 8])


def test_projection_discriminator_adds_the_class_embedding_inner_product():
    torch.manual_seed(0)
    d = GANPair(GANNetConfig([1, 8, 8], z_dim=4, width=4, num_classes=5)).discriminator
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 4, 4])
    phi = d.body(x).flatten(1)
    want = d.head(phi).squeeze(1) + (d.embed.weight[y] * phi).sum(1)
    torch.testing.assert_close(d(x, y), want)
    unconditional = GANPair(GANNetConfig([1, 8, 8], z_dim=4, width=4)).discriminator
    assert unconditional.embed is None and unconditional(x).shape == (4,)


def test_spectral_norm_bounds_every_critic_layer():
    torch.manual_seed(0)
    d = GANPair(GANNetConfig([1, 16, 16], z_dim=4, width=4, spectral_norm=True)).discriminator
    for _ in range(30):  # one power iteration per training-mode forward
        d(torch.randn(2, 1, 16, 16))
    d.eval()
    layers = [m for m in [*d.body, d.head] if hasattr(m, "parametrizations")]
    assert len(layers) == 3
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    pair = GANPair(GANNetConfig([1, 8, 8], z_dim=4, width=4, num_classes=2, spectral_norm=True))
    save_gan(pair, tmp_path / "m", {"method": "wgan-gp", "class_names": ["a", "b"]})
    assert is_gan_folder(tmp_path / "m") and not is_gan_folder(tmp_path)
    loaded, meta = load_gan(tmp_path / "m")
    assert meta["method"] == "wgan-gp" and loaded.config == pair.config
    for (k, a), (_, b) in zip(pair.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    with pytest.raises(ConfigError, match="not a saved GAN"):
        load_gan(tmp_path)
