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
