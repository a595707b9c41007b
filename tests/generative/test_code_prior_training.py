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


def test_caption_prior_trains_and_evaluates(tmp_path):
    """A caption-conditioned prior end to end at tiny size: the prefix is the caption
    ("the digit 3"), the null prefix the empty caption; samples are scored by the class of
    the image each test caption describes."""
    import json
    from pathlib import Path

    from lmforge.generative.code_prior import load_prior
    from lmforge.generative.vqgan import save_vqgan
    from lmforge.train.config import load_config

    recipes = Path(__file__).resolve().parents[2] / "lmforge" / "recipes"
    quiet = ["log.progress=false", "log.plot=false"]
    vqgan = VQGAN(VQGANConfig(channels=1, image_size=8, hidden=[8, 16], num_codes=16,
                              code_dim=4))  # fmt: skip
    meta = {"dataset": "digits", "image_size": 8, "data_seed": 0, "channels": 1}
    vq_dir = save_vqgan(vqgan, tmp_path / "vq", meta)  # an untrained first stage will do
    over = [f"out_dir={tmp_path / 'prior'}", f"prior.vqgan={vq_dir}", "prior.condition=caption",
            "prior.cfg_scale=2.0", *quiet]  # fmt: skip
    config = load_config(recipes / "vqgan-prior-tiny.yaml", over, PriorRunConfig)
    summary = train_code_prior(config)
    model, _, layout, info = load_prior(summary["model_dir"])
    assert layout.captioned and layout.caption_length == 4  # <bos> the digit d
    assert info["caption_tokenizer"]["vocab"][3:] == ["0", "1", "2", "3", "4", "5", "6", "7",
                                                      "8", "9", "digit", "the"]  # fmt: skip
    assert model.config.vocab_size == 16 + 15 and model.config.max_position_embeddings == 8
    scored = [
        json.loads(x) for x in (tmp_path / "prior" / "samples.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in scored] == [2, 4] and 0 <= scored[-1]["cond_accuracy"] <= 1
    with pytest.raises(ValueError, match="needs captions"):
        evaluate_prior(model, None, layout, PriorSection(), None, 2)
    config.prior.condition = "words"
    with pytest.raises(ConfigError, match="prior.condition='words'"):
        train_code_prior(config)
