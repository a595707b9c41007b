"""`train_vqgan`'s pieces: the held-out metrics against a direct computation and the section
checks (the whole run is tested through ``lmforge vqgan train`` in tests/commands)."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.config import ConfigError
from lmforge.generative.vq import codebook_perplexity
from lmforge.generative.vqgan import VQGAN, VQGANConfig
from lmforge.generative.vqgan_training import (
    VQGANSection,
    check_section,
    network_config,
    reconstruction_metrics,
)


def test_reconstruction_metrics_match_a_direct_computation():
    torch.manual_seed(0)
    model = VQGAN(
        VQGANConfig(channels=1, image_size=8, hidden=[8], num_codes=6, code_dim=3)
    ).train()
    images = torch.rand(10, 1, 8, 8) * 2 - 1
    model(images)  # a trained-ish codebook
    got = reconstruction_metrics(model, images, batch_size=3)
    model.eval()
    with torch.no_grad():
        x_rec, q = model(images)
    mse = (images - x_rec.clamp(-1, 1)).pow(2).flatten(1).mean(1)
    assert math.isclose(got["psnr"], float((10 * torch.log10(4 / mse)).mean()), rel_tol=1e-5)
    counts = torch.bincount(q.indices.flatten(), minlength=6).float()
    assert math.isclose(got["codebook_usage"], float((counts > 0).float().mean()))
    assert math.isclose(got["code_perplexity"], codebook_perplexity(counts), rel_tol=1e-6)
    assert model.training is False


def test_section_checks():
    with pytest.raises(ConfigError, match="needs vqgan.classifier_steps"):
        check_section(VQGANSection(classifier_steps=0))
    with pytest.raises(ConfigError, match="disc_weight"):
        check_section(VQGANSection(disc_weight=-1))
    with pytest.raises(ConfigError, match="vqgan.network"):
        network_config(VQGANSection(network={"widths": [4]}), (1, 16, 16))
    assert network_config(VQGANSection(), (3, 16, 16)).channels == 3
