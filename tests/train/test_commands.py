"""`lmforge pretrain` / `lmforge sft` end to end on tiny settings (in-process CLI)."""

from __future__ import annotations

import json
import random

import pytest

from lmforge.cli import main
from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer
from lmforge.train import checkpoint as ckpt

TINY = ["model.preset=tiny", "data.synthetic_docs=200", "data.val_docs=20", "data.seq_len=64",
        "train.batch_size=4", "train.max_time_s=0", "train.eval_every=0", "train.save_every=0",
        "log.progress=false", "log.plot=false", "data.num_workers=0"]  # fmt: skip


def _pretrain(out, *extra):
    return main(["pretrain", "--config", "recipes/pretrain-tiny.yaml", "--out", str(out),
                 *TINY, *extra])  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    assert _pretrain(out, "train.max_steps=6", "log.plot=true") == 0
    return out


def test_pretrain_run_folder(pretrained, capsys):
    out = pretrained
    for name in ("config.yaml", "metrics.jsonl", "training.png", "model/config.json",
                 "model/tokenizer.json", "checkpoints/latest"):  # fmt: skip
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 7))
    assert "val_loss" in records[-1]
    model, tok = load_model(out / "model"), load_tokenizer(out / "model")
    assert model.config.vocab_size >= tok.vocab_size and model.config.hidden_size == 64
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-00000006"


def test_pretrain_resumes_when_run_again(pretrained, capsys):
    assert _pretrain(pretrained, "train.max_steps=8") == 0
    assert "resumed from" in capsys.readouterr().out
    steps = [json.loads(x)["step"] for x in (pretrained / "metrics.jsonl").read_text().split("\n")
             if x and "val_loss" not in x]  # fmt: skip
    assert steps == list(range(1, 9))


def test_bad_override_is_one_line_exit_2(tmp_path, capsys):
    assert _pretrain(tmp_path, "optim.lrr=1") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("lmforge pretrain: error: ") and "did you mean 'lr'" in err


def test_divergence_stops_naming_step_with_checkpoint_intact(tmp_path, capsys):
    status = _pretrain(tmp_path, "train.max_steps=20", "train.save_every=1",
                       "optim.lr=1e12", "optim.warmup_steps=0", "optim.grad_clip=0")  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "error: step " in err and "loss is" in err, err
    step = int(err.split("error: step ")[1].split(":")[0])
    good = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert good.name == f"step-{step - 1:08d}" and ckpt.is_complete(good)


def _chat_file(path, n=40, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            messages = [{"role": "user", "content": f"What is {a} + {b}?"},
                        {"role": "assistant", "content": f"{a} + {b} = {a + b}."}]  # fmt: skip
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def test_sft_end_to_end(pretrained, tmp_path, capsys):
    data = _chat_file(tmp_path / "chat.jsonl")
    out = tmp_path / "sft"
    status = main(["sft", "--config", "recipes/sft-tiny.yaml", "--model", str(pretrained / "model"),
                   "--data", str(data), "--out", str(out), "train.max_steps=4",
                   "train.batch_size=2", "data.seq_len=64", "log.progress=false",
                   "log.plot=false", "data.val_fraction=0.1", "train.max_time_s=0"])  # fmt: skip
    text = capsys.readouterr().out
    assert status == 0, text
    assert "36 train / 4 validation examples" in text and "efficiency" in text
    assert "validation loss" in text
    assert load_model(out / "model").config.hidden_size == 64
    assert (out / "model" / "tokenizer.json").is_file()


def test_sft_without_data_uses_synthetic_chats(pretrained, tmp_path, capsys):
    out = tmp_path / "sft"
    status = main(["sft", "--config", "recipes/sft-tiny.yaml", "--model", str(pretrained / "model"),
                   "--out", str(out), "train.max_steps=2", "train.batch_size=2",
                   "data.synthetic_docs=40", "data.seq_len=128", "log.progress=false",
                   "log.plot=false", "data.val_fraction=0.1", "train.max_time_s=0"])  # fmt: skip
    text = capsys.readouterr().out
    assert status == 0, text
    assert "40 synthetic chats" in text and "36 train / 4 validation examples" in text
    assert (out / "data" / "synthetic-chat.jsonl").is_file()
    assert (out / "model" / "model.safetensors").is_file()


def test_sft_needs_model_and_data(tmp_path, capsys):
    assert main(["sft", "--config", "recipes/sft-tiny.yaml", "--out", str(tmp_path)]) == 2
    assert "sft needs a model: --model DIR" in capsys.readouterr().err


def test_pretrain_on_text_files(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = ["the", "cat", "sat", "on", "the", "mat", "and", "a", "dog", "ran", "to", "park"]
    rng = random.Random(0)
    for i in range(3):
        paragraphs = [" ".join(rng.choices(words, k=30)) for _ in range(20)]
        (corpus / f"part{i}.txt").write_text("\n\n".join(paragraphs))
    (tmp_path / "val.txt").write_text("the cat sat on the mat.\n\nthe dog ran to the park.")
    out = tmp_path / "run"
    status = _pretrain(out, f"data.paths=[{corpus}]", f"data.val_paths=[{tmp_path / 'val.txt'}]",
                       "data.vocab_size=300", "train.max_steps=2")  # fmt: skip
    text = capsys.readouterr().out
    assert status == 0, text
    assert "tokenizer: trained" in text and "in 60 documents" in text
    vocab = load_tokenizer(out / "model").vocab_size
    assert 256 < vocab <= 300
    assert load_model(out / "model").config.vocab_size == 320  # rounded up to a multiple of 64
