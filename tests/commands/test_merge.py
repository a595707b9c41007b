"""`lmforge sft --peft …` (adapter-only checkpoints that peft loads, resume), `lmforge merge`
and the ``--adapter`` engine of `lmforge serve` end to end on a tiny model (in-process CLI)."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
from safetensors.torch import load_file

import lmforge
from lmforge.cli import main
from lmforge.peft import load_adapter
from lmforge.train import checkpoint as ckpt

TINY = ["model.preset=tiny", "data.synthetic_docs=60", "data.val_docs=0", "data.seq_len=32",
        "train.batch_size=2", "train.max_time_s=0", "train.eval_every=0", "train.save_every=0",
        "log.progress=false", "log.plot=false", "data.num_workers=0", "data.vocab_size=300",
        "train.max_steps=1"]  # fmt: skip
SFT = ["train.batch_size=2", "data.seq_len=48", "log.progress=false", "log.plot=false",
       "data.val_fraction=0", "train.max_time_s=0", "train.eval_every=0"]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    assert (
        main(["pretrain", "--config", "recipes/pretrain-tiny.yaml", "--out", str(out), *TINY]) == 0
    )
    return out / "model"


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    with open(path, "w") as f:
        for _ in range(12):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            messages = [{"role": "user", "content": f"{a}+{b}?"},
                        {"role": "assistant", "content": f"{a + b}"}]  # fmt: skip
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def _sft(base, chat, out, options, *overrides):
    return main(["sft", "--config", "recipes/sft-tiny.yaml", "--model", str(base), *options,
                 "--out", str(out), "--data", str(chat), "--", *SFT, *overrides])  # fmt: skip


def test_sft_lora_saves_adapter_only_and_resumes(base, chat, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    args = ["--peft", "lora", "--lora-r", "4", "--lora-alpha", "8"]
    capsys.readouterr()
    assert _sft(base, chat, out, args, "train.save_every=2", "train.max_steps=2") == 0
    lora = 4 * sum(m.in_features + m.out_features for n, m in
                   lmforge.load_model(base).named_modules() if n.endswith("_proj"))  # fmt: skip
    total = lmforge.load_model(base).num_parameters() + lora
    assert f"peft: lora, {lora:,} trainable / {total:,} total parameters" in capsys.readouterr().out
    model_dir = out / "model"
    assert (model_dir / "adapter_config.json").is_file() and not list(model_dir.glob("model*"))
    cp = ckpt.latest_checkpoint(out / "checkpoints")
    assert cp is not None and not list(cp.glob("model*.safetensors"))
    optim = load_file(cp / "trainer_state" / "optimizer.safetensors")
    assert optim and all(".lora_" in k for k in optim)  # optimizer state: the adapter only

    # peft over the HF base gives the same logits as lmforge with the adapter.
    ids = torch.randint(0, 250, (2, 9))
    ours = load_adapter(lmforge.load_model(base).eval(), model_dir)
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), model_dir)
    with torch.no_grad():
        lora_logits = ours(ids).logits
        assert (lora_logits - theirs.eval()(ids).logits).abs().max() < 1e-5
        assert (lora_logits - lmforge.load_model(base)(ids).logits).abs().max() > 1e-6

    # The adapter records its base, so peft's AutoPeftModelForCausalLM finds it from
    # another working directory.
    from peft import AutoPeftModelForCausalLM

    cfg = json.loads((model_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base.resolve())
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        auto = AutoPeftModelForCausalLM.from_pretrained(model_dir).eval()
    finally:
        os.chdir(here)
    with torch.no_grad():
        assert (auto(ids).logits - lora_logits).abs().max() < 1e-5

    assert _sft(base, chat, out, args, "train.save_every=2", "train.max_steps=3") == 0
    assert "resumed from" in capsys.readouterr().out

    # merge → a plain HF checkpoint with the same logits; serve --adapter merges at load.
    assert main(["merge", "--base", str(base), "--adapter", str(model_dir), "--out",
                 str(tmp_path / "merged")]) == 0  # fmt: skip
    merged = lmforge.load_model(tmp_path / "merged").eval()
    again = load_adapter(lmforge.load_model(base).eval(), model_dir)
    with torch.no_grad():
        assert (merged(ids).logits - again(ids).logits).abs().max() < 1e-5
    from lmforge.serve.loading import load_engine

    engine = load_engine(str(base), adapter=str(model_dir), dtype=None, device="cpu")[0]
    with torch.no_grad():
        assert (engine.model(ids).logits - merged(ids).logits).abs().max() < 1e-5


def test_sft_adapter_and_refusals(base, chat, tmp_path, capsys):
    assert _sft(base, chat, tmp_path / "a", ["--peft", "adapter", "--bottleneck", "4"],
                "train.max_steps=1") == 0  # fmt: skip
    cfg = json.loads((tmp_path / "a" / "model" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LMFORGE_BOTTLENECK"
    capsys.readouterr()
    assert _sft(base, chat, tmp_path / "p", ["--peft", "prefix"], "train.max_steps=1") == 2
    assert "needs unpacked batches" in capsys.readouterr().err
    status = main(["merge", "--base", str(base), "--adapter", str(tmp_path / "a" / "model"),
                   "--out", str(tmp_path / "m")])  # fmt: skip
    assert status == 2 and "cannot be merged" in capsys.readouterr().err


def test_merge_refuses_a_non_empty_out_without_force(checkpoint, adapter, tmp_path, run):
    """A non-empty --out needs --force; --out may never be the base or the adapter; without
    --base the adapter's recorded base is merged."""
    import lmforge

    folder, _ = checkpoint
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run("merge", "--base", str(folder), "--adapter", str(adapter), "--out", str(out))
    assert code == 2 and "--out is not empty; pass --force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, _, err = run("merge", "--adapter", str(adapter), "--out", str(out), "--force")
    assert code == 0, err
    merged = lmforge.load_model(out).eval()
    again = load_adapter(lmforge.load_model(folder), adapter).eval()
    ids = torch.randint(0, 250, (1, 7))
    with torch.no_grad():
        assert (merged(ids).logits - again(ids).logits).abs().max() < 1e-5
    for target in (folder, adapter):
        code, _, err = run("merge", "--base", str(folder), "--adapter", str(adapter),
                           "--out", str(target), "--force")  # fmt: skip
        assert code == 2 and "--out is the --" in err


def test_merge_average_writes_the_soup_and_its_extrapolation(checkpoint, tokenizer, tmp_path, run):
    """--average: θ = Σ w_i θ_i of two fine-tuned copies (tokenizer kept); --alpha scales the
    soup from --base; refusals name the flag."""
    from safetensors.torch import load_file

    import lmforge
    from lmforge.models.hf import save_model

    folder, model = checkpoint
    copies = []
    for i in range(2):
        tuned = lmforge.load_model(folder)
        with torch.no_grad():
            for p in tuned.parameters():
                p.add_(0.02 * (i + 1) * torch.randn_like(p))
        save_model(tuned, tmp_path / f"ft{i}", tokenizer=tokenizer)
        copies.append(tmp_path / f"ft{i}")
    key = "model.layers.1.self_attn.q_proj.weight"
    a, b, s = (load_file(f / "model.safetensors")[key].double() for f in (*copies, folder))
    code, _, err = run("merge", "--average", *map(str, copies), "--weights", "1", "3",
                       "--out", str(tmp_path / "soup"))  # fmt: skip
    assert code == 0, err
    torch.testing.assert_close(load_file(tmp_path / "soup" / "model.safetensors")[key],
                               (0.25 * a + 0.75 * b).float())  # fmt: skip
    assert (tmp_path / "soup" / "tokenizer.json").is_file()
    code, _, err = run("merge", "--average", *map(str, copies), "--base", str(folder),
                       "--alpha", "1.5", "--out", str(tmp_path / "expo"))  # fmt: skip
    assert code == 0, err
    torch.testing.assert_close(load_file(tmp_path / "expo" / "model.safetensors")[key],
                               (s + 1.5 * ((a + b) / 2 - s)).float())  # fmt: skip
    code, _, err = run(
        "merge", "--average", str(copies[0]), "--alpha", "2", "--out", str(tmp_path / "x")
    )
    assert code == 2 and "give --base" in err
    code, _, err = run(
        "merge", "--average", *map(str, copies), "--weights", "1", "--out", str(tmp_path / "x")
    )
    assert code == 2 and "1 weights for 2 models" in err
    code, _, err = run("merge", "--average", str(copies[0]), "--out", str(copies[0]), "--force")
    assert code == 2 and "--out is the --average" in err
