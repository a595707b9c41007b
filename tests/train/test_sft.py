"""`lmforge.train.sft.train_sft` end to end on tiny settings, its synthetic chats and its
validation split (the library entry point; ``lmforge sft`` is tested in
tests/commands/test_sft.py)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from rich.console import Console

from lmforge.config import ConfigError
from lmforge.models.hf import load_model
from lmforge.train.config import load_config
from lmforge.train.pretrain import train_pretrain
from lmforge.train.sft import split_validation, synthetic_chats_file, train_sft

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SFT = ["train.batch_size=2", "log.progress=false", "log.plot=false", "data.val_fraction=0.1",
       "train.max_time_s=0"]  # fmt: skip


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    config = load_config(RECIPES / "pretrain-tiny.yaml", [
        "model.preset=tiny", "data.synthetic_docs=200", "data.val_docs=20", "data.seq_len=64",
        "train.batch_size=4", "train.max_time_s=0", "train.eval_every=0", "train.save_every=0",
        "log.progress=false", "log.plot=false", "data.num_workers=0", "train.max_steps=6",
        f"out_dir={json.dumps(str(out))}"])  # fmt: skip
    train_pretrain(config, console=_quiet())
    return out


def _sft(model, out, *overrides) -> tuple[dict, str]:
    extra = [f"model.init_from={json.dumps(str(model))}", f"out_dir={json.dumps(str(out))}"]
    config = load_config(RECIPES / "sft-tiny.yaml", [*SFT, *overrides, *extra])
    console = _quiet()
    summary = train_sft(config, console=console)
    return summary, console.file.getvalue()


def _chat_file(path, n=40, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            messages = [{"role": "user", "content": f"What is {a} + {b}?"},
                        {"role": "assistant", "content": f"{a} + {b} = {a + b}."}]  # fmt: skip
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def test_sft_end_to_end(pretrained, tmp_path):
    data = _chat_file(tmp_path / "chat.jsonl")
    out = tmp_path / "sft"
    summary, text = _sft(pretrained / "model", out, f"data.paths=[{data}]", "train.max_steps=4",
                         "data.seq_len=64", "log.plot=false")  # fmt: skip
    assert "36 train / 4 validation examples" in text and "efficiency" in text
    assert "validation loss" in text
    assert summary["model_dir"] == str(out / "model")
    assert load_model(out / "model").config.hidden_size == 64
    assert (out / "model" / "tokenizer.json").is_file()


def test_sft_without_data_uses_synthetic_chats(pretrained, tmp_path):
    out = tmp_path / "sft"
    _, text = _sft(pretrained / "model", out, "train.max_steps=2", "data.synthetic_docs=40",
                   "data.seq_len=128")  # fmt: skip
    assert "40 synthetic chats" in text and "36 train / 4 validation examples" in text
    assert (out / "data" / "synthetic-chat.jsonl").is_file()
    assert (out / "model" / "model.safetensors").is_file()


def test_sft_needs_a_model(tmp_path):
    config = load_config(RECIPES / "sft-tiny.yaml", [f"out_dir={json.dumps(str(tmp_path))}"])
    with pytest.raises(ConfigError, match="model.init_from"):
        train_sft(config, console=_quiet())


def test_synthetic_chats_file_is_written_once_and_seeded(tmp_path):
    config = load_config(RECIPES / "sft-tiny.yaml", ["data.synthetic_docs=5", "train.seed=3"])
    path = Path(synthetic_chats_file(config, tmp_path))
    assert path == tmp_path / "data" / "synthetic-chat.jsonl"
    chats = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
    assert len(chats) == 5 and chats[0][0]["role"] == "user"
    mtime = path.stat().st_mtime_ns
    assert synthetic_chats_file(config, tmp_path) == str(path)
    assert path.stat().st_mtime_ns == mtime  # unchanged content is not rewritten


def test_split_validation_is_seeded_and_keeps_at_least_one():
    examples = list(range(20))
    train, val = split_validation(examples, 0.1, seed=0)
    assert len(val) == 2 and sorted(train + val) == examples
    assert split_validation(examples, 0.1, seed=0) == (train, val)
    assert len(split_validation(examples, 0.01, seed=0)[1]) == 1
    assert split_validation(examples, 0, seed=0) == (examples, [])
    assert split_validation([1], 0.5, seed=0) == ([1], [])


def test_rerun_with_another_model_of_the_same_shape_is_refused(pretrained, tmp_path):
    """The issue's case: a recipe's fixed out_dir and a different --model silently resumed."""
    import shutil

    from lmforge.train.resume_rules import ResumeRefused

    chat = _chat_file(tmp_path / "chat.jsonl", n=20)
    other = shutil.copytree(pretrained / "model", tmp_path / "other-model")  # same shape
    out = tmp_path / "run"
    _sft(pretrained / "model", out, "train.max_steps=1", f"data.paths=[{json.dumps(str(chat))}]")
    with pytest.raises(ResumeRefused) as err:
        _sft(other, out, "train.max_steps=2", f"data.paths=[{json.dumps(str(chat))}]")
    text = str(err.value)
    assert "different model" in text and "other-model" in text and "model.init_from" in text
    assert "--out NEW_DIR" in text and "train.resume=false" in text
    summary, text = _sft(other, out, "train.max_steps=2", "train.resume=false",
                         f"data.paths=[{json.dumps(str(chat))}]")  # fmt: skip
    assert summary["step"] == 2 and "starting over" in text
