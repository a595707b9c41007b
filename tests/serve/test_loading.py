"""`load_engine`: a checkpoint folder → engine, tokenizer, folder, context; its checks."""

from __future__ import annotations

import shutil

import pytest

from lmforge.serve.loading import load_engine


def test_load_engine_returns_engine_tokenizer_folder_and_context(model_dir):
    engine, tok, folder, context = load_engine(model_dir, max_num_seqs=3)
    assert folder == model_dir and context == 256
    assert tok.vocab_size <= engine.model.config.vocab_size
    assert not engine.model.training


def test_load_engine_checks_the_folder(model_dir, tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        load_engine(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"not a checkpoint folder \(no config.json\)"):
        load_engine(tmp_path)
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, no_tok / name)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_engine(no_tok)


@pytest.fixture(scope="module")
def recorded_adapter(model_dir, tmp_path_factory):
    """A random (non-zero) LoRA adapter for ``model_dir`` recording it as its base."""
    import torch

    from lmforge.models.hf import load_model
    from lmforge.peft import apply_lora, save_adapter

    model = apply_lora(load_model(model_dir), r=2, alpha=4, target_modules="all-linear")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    out = tmp_path_factory.mktemp("recorded-adapter")
    save_adapter(model, out, base_model_name_or_path=str(model_dir))
    return out


def test_load_engine_resolves_a_hub_id_through_the_local_cache(model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(ValueError, match="download it with `huggingface-cli download Org/Chat`"):
        load_engine("Org/Chat")
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    snapshot = cache / "models--Org--Chat" / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (cache / "models--Org--Chat" / "refs").mkdir()
    (cache / "models--Org--Chat" / "refs" / "main").write_text(commit)
    engine, tok, folder, context = load_engine("Org/Chat", max_num_seqs=1)
    assert folder == snapshot and context == 256
    assert tok.vocab_size <= engine.model.config.vocab_size


def test_load_engine_without_a_model_uses_the_adapters_recorded_base(model_dir, recorded_adapter):
    import torch

    from lmforge.peft.merging import load_merged

    engine, _, folder, _ = load_engine(None, adapter=recorded_adapter, max_num_seqs=1)
    assert folder == model_dir
    merged = load_merged(model_dir, recorded_adapter)
    got = dict(engine.model.named_parameters())
    for name, p in merged.named_parameters():  # the adapter is merged into the recorded base
        torch.testing.assert_close(got[name], p, rtol=0, atol=0)
    with pytest.raises(ValueError, match="name the model"):
        load_engine(None)


def test_load_engine_passes_compile_decode(model_dir):
    """The decode step as one function (eager here: no compilation): same greedy tokens."""
    from lmforge.infer.params import SamplingParams

    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    plain, _, _, _ = load_engine(model_dir, device="cpu", max_num_seqs=2)
    fused, _, _, _ = load_engine(model_dir, device="cpu", max_num_seqs=2, compile_decode="eager")
    assert fused.compile_decode == "eager"
    prompts = [[5, 6, 7], [8, 9]]
    out = fused.generate(prompts, params)
    assert fused.compiled is not None
    assert [o.token_ids for o in out] == [o.token_ids for o in plain.generate(prompts, params)]
