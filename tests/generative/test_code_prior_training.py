"""`train_code_prior`'s pieces: the prior model sized to the code layout, class-conditional
evaluation samples, the section checks (the whole run: tests/commands/test_vqgan.py)."""

from __future__ import annotations

import pytest

from lmforge.config import ConfigError
from lmforge.generative.code_prior import PriorLayout
from lmforge.generative.code_prior_training import (
    PriorRunConfig,
    PriorSection,
    evaluate_prior,
    prior_model,
    train_code_prior,
)
from lmforge.generative.vqgan import VQGAN, VQGANConfig
from lmforge.vision.classifier import ImageClassifier


def test_prior_model_fits_the_layout_and_samples_decode():
    layout = PriorLayout(num_codes=6, num_classes=3, grid=(2, 2))
    config = PriorRunConfig()
    config.model.overrides = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                              "num_key_value_heads": 1}  # fmt: skip
    model = prior_model(config, layout)
    assert model.config.vocab_size == 10 and model.config.max_position_embeddings == 5
    vqgan = VQGAN(VQGANConfig(channels=1, image_size=8, hidden=[8, 8], num_codes=6, code_dim=2))
    clf = ImageClassifier(1, {"label": 3}, width=4)
    images, labels, metrics = evaluate_prior(model, vqgan, layout, PriorSection(), clf, 5)
    assert images.shape == (5, 1, 8, 8) and labels.tolist() == [0, 1, 2, 0, 1]
    assert images.abs().max() <= 1 and 0 <= metrics["cond_accuracy"] <= 1


def test_section_checks():
    with pytest.raises(ConfigError, match="prior.vqgan is empty"):
        train_code_prior(PriorRunConfig())
    config = PriorRunConfig(prior=PriorSection(vqgan="x", p_uncond=1.0))
    with pytest.raises(ConfigError, match="p_uncond"):
        train_code_prior(config)
