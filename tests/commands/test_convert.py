"""`lmforge convert`: dtype and shard size, tokenizer files copied, output loads in lmforge
and `transformers`."""

from __future__ import annotations

import json

import torch

from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer

VOCAB = 320  # the checkpoint fixture's (conftest.py)


def test_convert_to_sharded_bf16_loads_in_lmforge_and_transformers(checkpoint, tmp_path, run):
    from transformers import AutoModelForCausalLM

    folder, model = checkpoint
    out_dir = tmp_path / "bf16"
    code, out, err = run(
        "convert", str(folder), "--out", str(out_dir),
        "--dtype", "bfloat16", "--max-shard-size", "40KB",
    )  # fmt: skip
    assert code == 0, err
    assert "bfloat16" in out and "tokenizer.json" in out
    shards = sorted(out_dir.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (out_dir / "model.safetensors.index.json").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out_dir / name).read_bytes() == (folder / name).read_bytes()
    assert json.loads((out_dir / "generation_config.json").read_text()) == json.loads(
        (folder / "generation_config.json").read_text()
    )

    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        ours = load_model(out_dir)
        assert ours.model.embed_tokens.weight.dtype == torch.bfloat16
        assert torch.allclose(ours(ids).logits.float(), ref, atol=0.05)
        hf = AutoModelForCausalLM.from_pretrained(out_dir).eval()
        assert torch.allclose(hf(ids).logits.float(), ref, atol=0.05)
    assert load_tokenizer(out_dir).vocab_size == VOCAB

    code, out, _ = run("info", str(out_dir), "--json")
    info = json.loads(out)
    assert info["dtype_on_disk"] == "bfloat16" and len(info["weight_files"]) == len(shards)


def test_convert_refuses_to_overwrite_its_source(checkpoint, run):
    folder, _ = checkpoint
    code, _, err = run("convert", str(folder), "--out", str(folder))
    assert code == 2 and "different folder" in err
