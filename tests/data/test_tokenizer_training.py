"""`train_tokenizer_on_files`: documents from files and folders, counted; none is an error."""

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
    with pytest.raises(DataError, match="b.jsonl:1: missing field 'text'"):
        train_tokenizer_on_files([tmp_path], 300)
    _, docs, _ = train_tokenizer_on_files([tmp_path / "a.txt"], 300, txt_docs="file")
    assert docs == 1


def test_no_documents_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no documents found in"):
        train_tokenizer_on_files([tmp_path / "empty.txt"], 300)
    with pytest.raises(DataError, match="no such file or folder"):
        train_tokenizer_on_files([tmp_path / "missing.txt"], 300)
