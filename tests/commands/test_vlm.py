"""``lmforge vlm sft`` end to end through `lmforge.cli.main`: exit status, the files it
writes, and a clean error for a bad ``--model`` folder."""

from __future__ import annotations

import json

from lmforge.cli import main

SMALL = [
    "vlm.tasks=[colour]", "vlm.image_size=16", "vlm.train_examples=12", "vlm.eval_examples=4",
    "vlm.vision_hidden=32", "vlm.hidden_size=32", "vlm.vocab_size=320", "vlm.num_heads=2",
    "vlm.num_kv_heads=1", "vlm.vision_heads=2", "data.seq_len=128", "train.batch_size=2",
    "train.max_steps=2", "train.eval_every=0", "train.save_every=0", "log.progress=false",
    "log.plot=false",
]  # fmt: skip


def test_vlm_sft_command_writes_model_and_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["vlm", "sft", "--config", "recipes/vlm-tiny.yaml", "--out", str(out), *SMALL]) == 0
    assert (out / "model" / "config.json").is_file()
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == "qwen2_vl"
    assert (out / "model" / "tokenizer.json").is_file()
    assert "colour" in json.loads((out / "heldout_accuracy.json").read_text())
    assert "held-out accuracy" in capsys.readouterr().out


def test_vlm_sft_refuses_a_missing_model_folder(tmp_path, capsys):
    code = main(["vlm", "sft", "--model", str(tmp_path / "nope"), *SMALL])
    assert code == 2
    assert "no such directory" in capsys.readouterr().err
