"""`lmforge dpo`: flags (--model, --data, --peft) → config, and one-line errors."""

from __future__ import annotations

import json

TINY = ["data.synthetic_docs=60", "data.seq_len=96", "train.batch_size=4", "train.max_steps=2",
        "train.max_time_s=0", "train.eval_every=0", "train.save_every=2", "log.progress=false",
        "log.plot=false", "data.val_fraction=0.1"]  # fmt: skip


def test_dpo_with_lora_uses_the_base_as_reference(preference_model_dir, tmp_path, run):
    out = tmp_path / "lora"
    code, text, err = run("dpo", "--config", "recipes/dpo-tiny.yaml", "--model", str(preference_model_dir),
                          "--out", str(out), "--peft", "lora", "--lora-r", "4",
                          "dpo.loss_type=ipo", "dpo.precompute_reference=true", *TINY)  # fmt: skip
    assert code == 0, err
    assert "precomputed" in text and "ipo" in text
    assert (out / "model" / "adapter_config.json").is_file()
    assert json.loads((out / "model" / "adapter_config.json").read_text())["r"] == 4


def test_dpo_reads_data_files(preference_model_dir, tmp_path, run):
    from lmforge.align.preference_data import write_preference_jsonl

    data = write_preference_jsonl(tmp_path / "prefs.jsonl", 20, seed=1)
    out = tmp_path / "dpo"
    code, text, err = run("dpo", "--config", "recipes/dpo-tiny.yaml", "--model", str(preference_model_dir),
                          "--data", str(data), "--out", str(out), *TINY)  # fmt: skip
    assert code == 0, err
    assert "synthetic preference pairs" not in text
    assert "18 train / 2 validation" in " ".join(text.split())
    assert str(data) in (out / "config.yaml").read_text()


def test_dpo_rejects_bad_settings(preference_model_dir, tmp_path, run):
    base = ["dpo", "--config", "recipes/dpo-tiny.yaml", "--out", str(tmp_path)]
    code, _, err = run(*base)
    assert code == 2 and "dpo needs a model: --model DIR" in err
    code, _, err = run(*base, "--model", str(preference_model_dir), "dpo.loss_type=kto")
    assert code == 2 and "dpo.loss_type" in err
    code, _, err = run(*base, "--model", str(preference_model_dir), "dpo.reference=adapter")
    assert code == 2 and "needs --peft" in err
