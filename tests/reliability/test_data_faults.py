"""Fault injection on the data caches and inputs: a failed run (empty data, a crash while
tokenizing or while saving the tokenizer) leaves nothing a later run reuses by mistake;
changed inputs are never served from a cache; a truncated JSON file and bad records are
named (file, line, column) or skipped with the counts on screen. (README "Guarantees":
caches keyed by a fingerprint of their inputs.)"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from lmforge.data import tokenizer_training
from lmforge.data import tokens as tokens_module
from lmforge.data.sources import DataError, load_records
from lmforge.data.tasks import synthetic_corpus
from lmforge.data.tokenizer_training import CACHE_KEY_FILE, cached_tokenizer
from lmforge.data.tokens import TokenFile, build_token_file
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import load_config
from lmforge.train.pretrain import train_pretrain

DOCS = synthetic_corpus(60, seed=3)


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _pretrain(data, out, *extra):
    config = load_config(None, [
        f"data.paths=[{data}]", f"out_dir={json.dumps(str(out))}", "model.preset=tiny",
        "data.vocab_size=300", "data.seq_len=32", "data.num_workers=0", "train.batch_size=2",
        "train.max_steps=1", "train.eval_every=0", "train.save_every=0", "train.cpu_threads=1",
        "log.progress=false", "log.plot=false", *extra,
    ])  # fmt: skip
    console = Console(file=io.StringIO(), width=400)
    train_pretrain(config, console=console)
    return console.file.getvalue()


def test_pretrain_on_an_empty_file_leaves_nothing_the_next_run_reuses(tmp_path):
    """The reported defect: the failed run left a 0-merge tokenizer and a token cache that
    the next run in the same folder reused (3.8× more tokens per document)."""
    out, data = tmp_path / "run", tmp_path / "corpus.jsonl"
    data.write_text("")
    with pytest.raises(DataError, match="no documents"):
        _pretrain(data, out)
    assert not (out / "tokenizer" / CACHE_KEY_FILE).exists()
    assert not (out / "data" / "train" / "index.json").exists()

    _jsonl(data, DOCS)  # the user fixes the file and runs again in the same folder
    with open(data, "a") as f:
        f.write('{"txt": "a typo"}\n')  # one bad record, skipped and counted on screen
    text = _pretrain(data, out, "data.skip_bad=true")
    fresh, _, _ = cached_tokenizer([data], tmp_path / "fresh", 300, skip_bad=True)
    assert load_tokenizer(out / "tokenizer").backend.to_str() == fresh.backend.to_str()
    assert fresh.vocab_size > 261  # merges were learnt (256 bytes + 5 specials without)
    tokens = TokenFile(out / "data" / "train")
    assert tokens.num_tokens == sum(len(fresh.encode(d, True)) + 1 for d in DOCS)
    assert "tokenizer: trained" in text and "peak memory" in text
    assert text.count("skipped 1 (missing field: 1)") == 2  # tokenizer and token file lines


def test_a_stale_tokenizer_without_a_key_is_trained_again(tmp_path):
    """A tokenizer folder left by an older or failed run (no cache key) is never reused."""
    data = _jsonl(tmp_path / "a.jsonl", DOCS)
    stale, _, _ = cached_tokenizer([_jsonl(tmp_path / "other.jsonl", ["x y"] * 3)],
                                   tmp_path / "tok", 300)  # fmt: skip
    (tmp_path / "tok" / CACHE_KEY_FILE).unlink()
    tok, reused, _ = cached_tokenizer([data], tmp_path / "tok", 300)
    assert not reused and tok.backend.to_str() != stale.backend.to_str()


def test_a_crash_while_saving_the_tokenizer_leaves_no_cache(tmp_path, monkeypatch):
    data = _jsonl(tmp_path / "a.jsonl", DOCS)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer_training, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        cached_tokenizer([data], tmp_path / "tok", 300)
    assert (tmp_path / "tok" / "tokenizer.json").is_file()  # saved, but not marked complete
    monkeypatch.undo()
    assert not cached_tokenizer([data], tmp_path / "tok", 300)[1]
    assert cached_tokenizer([data], tmp_path / "tok", 300)[1]


def test_a_crash_while_tokenizing_is_rebuilt_not_reused(tmp_path, monkeypatch):
    data = _jsonl(tmp_path / "a.jsonl", DOCS)
    tok, _, _ = cached_tokenizer([data], tmp_path / "tok", 300)
    reference = build_token_file([data], tok, tmp_path / "reference", num_workers=0)
    encode = tokens_module._encode
    calls = []

    def crash_on_second_chunk(*args):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("killed")
        return encode(*args)

    monkeypatch.setattr(tokens_module, "CHUNK_DOCS", 16)
    monkeypatch.setattr(tokens_module, "_encode", crash_on_second_chunk)
    with pytest.raises(MemoryError):
        build_token_file([data], tok, tmp_path / "out", num_workers=0)
    assert (tmp_path / "out" / "tokens.bin").exists() is False  # the partial file never lands
    assert not (tmp_path / "out" / "index.json").exists()
    info = build_token_file([data], tok, tmp_path / "out", num_workers=0)
    assert not info.reused and info.num_tokens == reference.num_tokens
    assert np.array_equal(
        TokenFile(tmp_path / "out").tokens, TokenFile(tmp_path / "reference").tokens
    )


def test_changed_inputs_or_a_damaged_cache_are_never_reused(tmp_path):
    data = _jsonl(tmp_path / "a.jsonl", DOCS)
    tok, _, _ = cached_tokenizer([data], tmp_path / "tok", 300)
    out = tmp_path / "out"
    first = build_token_file([data], tok, out, num_workers=0)
    _jsonl(data, DOCS[:-1] + ["9" * len(DOCS[-1])])  # same size, the last document edited
    changed = build_token_file([data], tok, out, num_workers=0)
    assert not changed.reused and changed.num_tokens != first.num_tokens
    with open(out / "tokens.bin", "r+b") as f:  # a truncated token file
        f.truncate(100)
    assert not build_token_file([data], tok, out, num_workers=0).reused
    index = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**index, "tokenizer_hash": "0" * 64}))
    assert not build_token_file([data], tok, out, num_workers=0).reused


def test_a_truncated_json_array_names_line_and_column(tmp_path):
    """An interrupted download of Alpaca's JSON: the error names where it breaks, and
    skip_bad cannot skip it (the rest of the array is unreadable)."""
    records = [{"instruction": f"task {i}", "input": "", "output": f"answer {i}"} for i in range(5)]
    text = json.dumps(records, indent=2)
    path = tmp_path / "alpaca_data.json"
    path.write_text(text[: text.index("answer 3")])
    line = text[: text.index("answer 3")].count("\n") + 1
    for skip_bad in (False, True):
        with pytest.raises(
            DataError, match=rf"alpaca_data\.json:{line}:\d+: invalid JSON in element 3"
        ):
            load_records([path], skip_bad=skip_bad)
