"""`lmforge.train.pretrain.train_pretrain` end to end on tiny settings: the run folder,
resume, divergence, text files (the library entry point; ``lmforge pretrain`` is tested in
tests/commands/test_pretrain.py)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from rich.console import Console

from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer
from lmforge.train import checkpoint as ckpt
from lmforge.train.config import load_config
from lmforge.train.loop import TrainingDiverged
from lmforge.train.pretrain import train_pretrain

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "pretrain-tiny.yaml"
TINY = ["model.preset=tiny", "data.synthetic_docs=200", "data.val_docs=20", "data.seq_len=64",
        "train.batch_size=4", "train.max_time_s=0", "train.eval_every=0", "train.save_every=0",
        "log.progress=false", "log.plot=false", "data.num_workers=0"]  # fmt: skip


def _pretrain(out, *extra) -> tuple[dict, str]:
    """Run ``train_pretrain`` into ``out``; returns its summary and what it printed."""
    config = load_config(RECIPE, [*TINY, *extra, f"out_dir={json.dumps(str(out))}"])
    console = Console(file=io.StringIO(), width=200)
    summary = train_pretrain(config, console=console)
    return summary, console.file.getvalue()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    summary, _ = _pretrain(out, "train.max_steps=6", "log.plot=true")
    assert summary["model_dir"] == str(out / "model")
    return out


def test_pretrain_run_folder(pretrained):
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


def test_pretrain_resumes_when_run_again(pretrained):
    summary, text = _pretrain(pretrained, "train.max_steps=8")
    assert "resumed from" in text and summary["step"] == 8
    steps = [json.loads(x)["step"] for x in (pretrained / "metrics.jsonl").read_text().split("\n")
             if x and "val_loss" not in x]  # fmt: skip
    assert steps == list(range(1, 9))


def test_divergence_stops_naming_step_with_checkpoint_intact(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"step \d+: .*loss is") as info:
        _pretrain(tmp_path, "train.max_steps=20", "train.save_every=1", "optim.lr=1e12",
                  "optim.warmup_steps=0", "optim.grad_clip=0")  # fmt: skip
    step = int(str(info.value).split("step ")[1].split(":")[0])
    good = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert good.name == f"step-{step - 1:08d}" and ckpt.is_complete(good)


def test_pretrain_on_text_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = ["the", "cat", "sat", "on", "the", "mat", "and", "a", "dog", "ran", "to", "park"]
    rng = random.Random(0)
    for i in range(3):
        paragraphs = [" ".join(rng.choices(words, k=30)) for _ in range(20)]
        (corpus / f"part{i}.txt").write_text("\n\n".join(paragraphs))
    (tmp_path / "val.txt").write_text("the cat sat on the mat.\n\nthe dog ran to the park.")
    out = tmp_path / "run"
    _, text = _pretrain(out, f"data.paths=[{corpus}]", f"data.val_paths=[{tmp_path / 'val.txt'}]",
                        "data.vocab_size=300", "train.max_steps=2")  # fmt: skip
    assert "tokenizer: trained" in text and "in 60 documents" in text
    vocab = load_tokenizer(out / "model").vocab_size
    assert 256 < vocab <= 300
    assert load_model(out / "model").config.vocab_size == 320  # rounded up to a multiple of 64


def test_another_run_in_the_folder_is_refused_before_the_data_is_prepared(pretrained, tmp_path):
    """Issue: a different --model/data in a recipe's fixed out_dir resumed the old run."""
    from lmforge.train.resume_rules import ResumeRefused

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some other text\n" * 50)
    before = sorted(p.name for p in pretrained.rglob("*"))
    with pytest.raises(ResumeRefused) as err:
        _pretrain(pretrained, "train.max_steps=6", f"data.paths=[{json.dumps(str(corpus))}]")
    text = str(err.value)
    assert "different data" in text and "data.paths: [] -> [" in text
    assert "model.init_from=" in text and "train.resume=false" in text
    assert sorted(p.name for p in pretrained.rglob("*")) == before  # nothing written
