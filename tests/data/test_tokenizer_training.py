"""`train_tokenizer_on_files`: documents from files and folders (every text field of chat /
Alpaca / pair records), counted; none is an error. `cached_tokenizer`: reused only when its
fingerprint (sources, settings, file hashes) matches."""

from __future__ import annotations

import json

import pytest

from lmforge.data.sources import DataError
from lmforge.data.tasks import synthetic_corpus
from lmforge.data.tokenizer_training import train_tokenizer_on_files


def test_trains_on_txt_paragraphs_and_jsonl_records(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(synthetic_corpus(30, seed=1)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(
        "".join(json.dumps({"body": t}) + "\n" for t in synthetic_corpus(10, seed=2))
    )
    tok, docs, files = train_tokenizer_on_files([tmp_path / "a.txt"], 300)
    assert docs == 30 and files == [tmp_path / "a.txt"] and tok.vocab_size <= 300
    _, docs, files = train_tokenizer_on_files([tmp_path / "sub"], 300, text_field="body")
    assert docs == 10 and files == [tmp_path / "sub" / "b.jsonl"]
    with pytest.raises(DataError, match=r"b.jsonl:1: fields \['body'\] match no schema"):
        train_tokenizer_on_files([tmp_path], 300)
    _, docs, _ = train_tokenizer_on_files([tmp_path / "a.txt"], 300, txt_docs="file")
    assert docs == 1


def test_no_documents_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no documents found in"):
        train_tokenizer_on_files([tmp_path / "empty.txt"], 300)
    with pytest.raises(DataError, match="no such file or folder"):
        train_tokenizer_on_files([tmp_path / "missing.txt"], 300)


def test_reads_every_text_field_of_chat_and_alpaca_files(tmp_path):
    chat = [{"role": "user", "content": "zyxw"}, {"role": "assistant", "content": "vvv"}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": chat}) + "\n")
    alpaca = [{"instruction": "jjj", "input": "hhh", "output": "ggg"}]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "fff", "completion": "ddd"}))
    tok, docs, files = train_tokenizer_on_files([tmp_path], 300, min_frequency=1)
    assert docs == 2 + 3 + 2 and len(files) == 3
    for word in ("zyxw", "vvv", "jjj", "hhh", "ggg", "fff", "ddd"):
        assert len(tok.encode(word)) == 1, word  # learnt from that field (each merges whole)
    assert len(tok.encode("zzzz")) > 1  # an unseen word does not


def _corpus(path, n=30, seed=1):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in synthetic_corpus(n, seed)))
    return path


def test_cached_tokenizer_is_reused_only_for_the_same_inputs(tmp_path):
    from lmforge.data.tokenizer_training import CACHE_KEY_FILE, cached_tokenizer

    data, folder = _corpus(tmp_path / "a.jsonl"), tmp_path / "tok"
    tok, reused, report = cached_tokenizer([data], folder, 300)
    assert not reused and report.counts["tokenizer documents"] == 30
    assert (folder / CACHE_KEY_FILE).is_file()
    again, reused, _ = cached_tokenizer([data], folder, 300)
    assert reused and again.backend.to_str() == tok.backend.to_str()
    assert not cached_tokenizer([data], folder, 310)[1]  # a setting changed
    assert cached_tokenizer([data], folder, 310)[1]
    _corpus(data, n=31)  # the data changed
    assert not cached_tokenizer([data], folder, 310)[1]
    (folder / "tokenizer.json").write_text((folder / "tokenizer.json").read_text() + " ")
    assert not cached_tokenizer([data], folder, 310)[1]  # the saved files changed
    (folder / CACHE_KEY_FILE).unlink()  # a folder without a key (an old or failed run)
    assert not cached_tokenizer([data], folder, 310)[1]


def test_no_documents_leaves_no_cache(tmp_path):
    from lmforge.data.tokenizer_training import CACHE_KEY_FILE, cached_tokenizer

    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no documents found"):
        cached_tokenizer([tmp_path / "empty.jsonl"], tmp_path / "tok", 300)
    assert not (tmp_path / "tok" / CACHE_KEY_FILE).exists()
