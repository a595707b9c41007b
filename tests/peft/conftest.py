"""Fixtures for PEFT tests: a tiny HF base model saved to disk and loaded in lmforge."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, hf_model_factory):
    """``factory(model_type="llama", **overrides) -> folder`` with an HF checkpoint (cached)."""
    cache: dict = {}

    def make(model_type: str = "llama", **overrides):
        key = (model_type, tuple(sorted(overrides.items())))
        if key not in cache:
            hf = hf_model_factory(model_type, tie_word_embeddings=False, **overrides)
            folder = tmp_path_factory.mktemp(f"base-{model_type}")
            hf.save_pretrained(folder)
            cache[key] = folder
        return cache[key]

    return make


@pytest.fixture
def randomize():
    """Give every trainable (adapter) parameter random values so adapters change logits."""

    def run(model, std: float = 0.2, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    noise = torch.randn(p.shape, generator=g) * std
                    p.add_(noise) if "magnitude" in name else p.copy_(noise)
        return model

    return run


@pytest.fixture
def ids():
    return torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(3))
