"""`lmforge sft`: --model / --data / --out map onto the config; errors are one line."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from lmforge.cli import main

    out = tmp_path_factory.mktemp("pretrain")
    tiny = ["model.preset=tiny", "data.synthetic_docs=60", "data.val_docs=0", "data.seq_len=32",
            "train.batch_size=2", "train.max_time_s=0", "train.eval_every=0",
            "train.save_every=0", "log.progress=false", "log.plot=false", "data.num_workers=0",
            "data.vocab_size=300", "train.max_steps=1"]  # fmt: skip
    assert main(["pretrain", "--config", "recipes/pretrain-tiny.yaml", "--out", str(out),
                 *tiny]) == 0  # fmt: skip
    return out / "model"


def test_sft_model_data_and_out_flags(base, tmp_path, run):
    data = tmp_path / "chat.jsonl"
    with open(data, "w") as f:
        for a in range(10):
            messages = [{"role": "user", "content": f"{a}+1?"},
                        {"role": "assistant", "content": f"{a + 1}"}]  # fmt: skip
            f.write(json.dumps({"messages": messages}) + "\n")
    out = tmp_path / "sft"
    code, text, err = run("sft", "--config", "recipes/sft-tiny.yaml", "--model", str(base),
                          "--data", str(data), "--out", str(out), "train.max_steps=2",
                          "train.batch_size=2", "data.seq_len=48", "log.progress=false",
                          "log.plot=false", "data.val_fraction=0.1",
                          "train.max_time_s=0")  # fmt: skip
    assert code == 0, err
    flat = " ".join(text.split())  # rich wraps long lines
    assert "kept 10 records" in flat and "9 train / 1 validation examples" in flat
    config = (out / "config.yaml").read_text()
    assert str(base) in config and str(data) in config
    assert (out / "model" / "model.safetensors").is_file()


def test_sft_needs_model_and_data(tmp_path, run):
    code, _, err = run("sft", "--config", "recipes/sft-tiny.yaml", "--out", str(tmp_path))
    assert code == 2
    assert "sft needs a model: --model DIR" in err
