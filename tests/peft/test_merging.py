"""`load_merged`: a LoRA adapter folded into its base checkpoint gives the adapter's logits."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.peft import apply_adapters, apply_lora, load_adapter, save_adapter
from lmforge.peft.merging import load_merged


def test_load_merged_matches_base_plus_adapter(base_dir, randomize, ids, tmp_path):
    folder = base_dir("llama")
    model = randomize(apply_lora(lmforge.load_model(folder), r=4, alpha=8,
                                 target_modules="all-linear"))  # fmt: skip
    save_adapter(model, tmp_path / "adapter")
    merged = load_merged(folder, tmp_path / "adapter").eval()
    assert not any(".lora_" in name for name, _ in merged.named_parameters())
    again = load_adapter(lmforge.load_model(folder), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert (merged(ids).logits - again(ids).logits).abs().max() < 1e-5
    half = load_merged(folder, tmp_path / "adapter", dtype="bfloat16")
    assert half.lm_head.weight.dtype == torch.bfloat16


def test_only_lora_merges(base_dir, tmp_path):
    folder = base_dir("llama")
    save_adapter(apply_adapters(lmforge.load_model(folder), bottleneck=4), tmp_path / "a")
    with pytest.raises(ValueError, match="cannot be merged into weights"):
        load_merged(folder, tmp_path / "a")


def test_load_adapted_and_adapter_base(base_dir, randomize, ids, tmp_path):
    """`load_adapted`: LoRA merged, other adapters attached (same logits as `load_adapter`);
    `adapter_base`: the recorded base folder, or an error naming the file."""
    from lmforge.peft import AdapterError
    from lmforge.peft.merging import adapter_base, load_adapted

    folder = base_dir("llama")
    bottleneck = randomize(apply_adapters(lmforge.load_model(folder), bottleneck=4))
    save_adapter(bottleneck, tmp_path / "b", base_model_name_or_path=str(folder))
    attached = load_adapted(folder, tmp_path / "b").eval()
    lora = randomize(apply_lora(lmforge.load_model(folder), r=4, alpha=8))
    save_adapter(lora, tmp_path / "l")
    merged = load_adapted(folder, tmp_path / "l").eval()
    assert not any(".lora_" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        for adapter, model in (("b", attached), ("l", merged)):
            again = load_adapter(lmforge.load_model(folder), tmp_path / adapter).eval()
            assert (model(ids).logits - again(ids).logits).abs().max() < 1e-5
    assert adapter_base(tmp_path / "b") == folder
    with pytest.raises(AdapterError, match="adapter_config.json: no base_model_name_or_path"):
        adapter_base(tmp_path / "l")
