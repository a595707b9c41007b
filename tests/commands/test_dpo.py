"""`lmforge dpo`: flags (--model, --data, --peft) → config, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

TINY = ["data.synthetic_docs=60", "data.seq_len=96", "train.batch_size=4", "train.max_steps=2",
        "train.max_time_s=0", "train.eval_every=0", "train.save_every=2", "log.progress=false",
        "log.plot=false", "data.val_fraction=0.1"]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lmforge.data.tasks.chat import synthetic_chats
    from lmforge.models.hf import save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train([m["content"] for c in synthetic_chats(200, 0) for m in c], 300)
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=320, hidden_size=32, intermediate_size=64,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)  # fmt: skip
    out = tmp_path_factory.mktemp("base") / "model"
    save_model(CausalLM(cfg), out, tokenizer=tok)
    return out


def test_dpo_with_lora_uses_the_base_as_reference(model_dir, tmp_path, run):
    out = tmp_path / "lora"
    code, text, err = run("dpo", "--config", "recipes/dpo-tiny.yaml", "--model", str(model_dir),
                          "--out", str(out), "--peft", "lora", "--lora-r", "4",
                          "dpo.loss_type=ipo", "dpo.precompute_reference=true", *TINY)  # fmt: skip
    assert code == 0, err
    assert "precomputed" in text and "ipo" in text
    assert (out / "model" / "adapter_config.json").is_file()
    assert json.loads((out / "model" / "adapter_config.json").read_text())["r"] == 4


def test_dpo_reads_data_files(model_dir, tmp_path, run):
    from lmforge.align.preference_data import write_preference_jsonl

    data = write_preference_jsonl(tmp_path / "prefs.jsonl", 20, seed=1)
    out = tmp_path / "dpo"
    code, text, err = run("dpo", "--config", "recipes/dpo-tiny.yaml", "--model", str(model_dir),
                          "--data", str(data), "--out", str(out), *TINY)  # fmt: skip
    assert code == 0, err
    assert "synthetic preference pairs" not in text
    assert "18 train / 2 validation" in " ".join(text.split())
    assert str(data) in (out / "config.yaml").read_text()


def test_dpo_rejects_bad_settings(model_dir, tmp_path, run):
    base = ["dpo", "--config", "recipes/dpo-tiny.yaml", "--out", str(tmp_path)]
    code, _, err = run(*base)
    assert code == 2 and "dpo needs a model: --model DIR" in err
    code, _, err = run(*base, "--model", str(model_dir), "dpo.loss_type=kto")
    assert code == 2 and "dpo.loss_type" in err
    code, _, err = run(*base, "--model", str(model_dir), "dpo.reference=adapter")
    assert code == 2 and "needs --peft" in err
