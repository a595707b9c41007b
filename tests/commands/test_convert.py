"""`lmforge convert`: dtype and shard size, tokenizer files copied, output loads in lmforge
and `transformers`."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lmforge.models.hf import load_model
from lmforge.models.quantize import quantize_model
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


@pytest.mark.parametrize(("scheme", "extra"), [("int8", []), ("int4", ["--group-size", "32"])])
def test_convert_quantize_writes_a_folder_that_loads_back_equal(
    checkpoint, tmp_path, run, scheme, extra
):
    folder, model = checkpoint
    out_dir = tmp_path / scheme
    code, out, err = run(
        "convert", str(folder), "--out", str(out_dir), "--quantize", scheme, *extra
    )
    assert code == 0, err
    assert json.loads((out_dir / "config.json").read_text())["quantization_config"]["bits"] == int(
        scheme[3:]
    )
    assert (out_dir / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    expected = quantize_model(copy.deepcopy(model), scheme, group_size=32)
    back = load_model(out_dir)
    for ids in (torch.randint(0, VOCAB, (2, 11)), torch.randint(0, VOCAB, (1, 4))):
        with torch.no_grad():
            assert torch.equal(back(ids).logits, expected(ids).logits)


def test_convert_dequantises_a_quantised_folder_for_transformers(checkpoint, tmp_path, run):
    from transformers import AutoModelForCausalLM

    folder, _ = checkpoint
    q_dir, fp_dir = tmp_path / "int8", tmp_path / "fp32"
    assert run("convert", str(folder), "--out", str(q_dir), "--quantize", "int8")[0] == 0
    code, _, err = run("convert", str(q_dir), "--out", str(fp_dir))
    assert code == 0, err
    assert "quantization_config" not in json.loads((fp_dir / "config.json").read_text())
    ids = torch.randint(0, VOCAB, (2, 20))  # > 16 rows: the int8 model runs its dequantised matmul
    with torch.no_grad():
        ref = load_model(q_dir)(ids).logits
        # transformers only warns about the unknown method, then reads the int8 codes as
        # weights and drops the scales: what it returns is not the model (documented)
        wrong = AutoModelForCausalLM.from_pretrained(q_dir).eval()(ids).logits
        assert (wrong - ref).abs().max() > 10 * ref.abs().max()
        hf = AutoModelForCausalLM.from_pretrained(fp_dir).eval()
        torch.testing.assert_close(hf(ids).logits, ref, rtol=1e-4, atol=1e-4)


def test_convert_refuses_an_int4_group_size_the_kernel_lacks(checkpoint, tmp_path, run):
    folder, _ = checkpoint
    code, _, err = run(
        "convert",
        str(folder),
        "--out",
        str(tmp_path / "q"),
        "--quantize",
        "int4",
        "--group-size",
        "48",
    )
    assert code == 2 and "--group-size 48" in err
