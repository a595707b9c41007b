"""Token files: contents equal direct encoding, identical with any number of workers,
cached until an input or the tokenizer changes, and never half-written."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from lmforge.data import tokens as tokens_module
from lmforge.data.sources import DataError
from lmforge.data.tokens import TokenFile, build_token_file, token_dtype
from lmforge.tokenizer import Tokenizer

TEXTS = [f"document {i}: " + "the quick brown fox " * (i % 7) for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS * 3, vocab_size=300)


def write_corpus(folder):
    folder.mkdir(exist_ok=True)
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:25]))
    (folder / "b.txt").write_text("\n\n".join(TEXTS[25:]) + "\n")
    return folder


def test_token_file_holds_bos_text_eos_per_document(tmp_path, tok):
    corpus = write_corpus(tmp_path / "corpus")
    info = build_token_file([corpus], tok, tmp_path / "out", num_workers=0)
    assert not info.reused and info.num_docs == len(TEXTS) and info.dtype == "uint16"
    data = TokenFile(tmp_path / "out")
    assert isinstance(data.tokens, np.memmap) and data.tokens.dtype == np.uint16
    docs = TEXTS[:25] + [t.strip() for t in TEXTS[25:]]  # .txt paragraphs are stripped
    expected = [tok.encode(t, add_special_tokens=True) + [tok.eos_token_id] for t in docs]
    assert [data.document(i).tolist() for i in range(len(data))] == expected
    assert data.num_tokens == sum(map(len, expected)) == int(data.doc_offsets[-1])
    assert data.vocab_size == tok.vocab_size
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    sources = index["sources"]["files"]
    assert {s["path"].rsplit("/", 1)[1] for s in sources} == {"a.jsonl", "b.txt"}
    assert all(len(s["sha256"]) == 64 for s in sources)
    assert index["num_docs"] == 40 and index["dtype"] == "uint16"
    assert len(index["tokenizer_hash"]) == 64


def test_workers_give_identical_files(tmp_path, tok, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus")
    monkeypatch.setattr(tokens_module, "CHUNK_DOCS", 3)  # many chunks, so order matters
    build_token_file([corpus], tok, tmp_path / "one", num_workers=0)
    build_token_file([corpus], tok, tmp_path / "two", num_workers=2)
    for name in ("tokens.bin", "doc_offsets.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_cache_is_reused_until_inputs_or_tokenizer_change(tmp_path, tok):
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    assert not build_token_file([corpus], tok, out, num_workers=0).reused
    assert build_token_file([corpus], tok, out, num_workers=0).reused
    assert not build_token_file([corpus], tok, out, num_workers=0, append_eos=False).reused
    assert build_token_file([corpus], tok, out, num_workers=0, append_eos=False).reused
    (corpus / "b.txt").write_text("new text\n")
    info = build_token_file([corpus], tok, out, num_workers=0, append_eos=False)
    assert not info.reused and info.num_docs == 26
    other = Tokenizer.train(TEXTS, vocab_size=280)
    assert not build_token_file([corpus], other, out, num_workers=0, append_eos=False).reused


def test_bad_records_error_or_are_counted(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": ""}\n{"txt": "typo"}\n{"text": "fine"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: missing field 'text'"):
        build_token_file([path], tok, tmp_path / "out", num_workers=0)
    info = build_token_file([path], tok, tmp_path / "out", num_workers=0, skip_bad=True)
    assert info.num_docs == 2
    assert dict(info.report.skipped) == {"missing field": 1}
    assert dict(info.report.counts) == {"empty documents left out": 1}
    cached = build_token_file([path], tok, tmp_path / "out", num_workers=0, skip_bad=True)
    assert cached.reused and cached.report.to_dict() == info.report.to_dict()


def test_interrupted_build_leaves_no_index(tmp_path, tok, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus")
    build_token_file([corpus], tok, tmp_path / "out", num_workers=0)
    with open(corpus / "a.jsonl", "a") as f:  # force a rebuild
        f.write(json.dumps({"text": "one more"}) + "\n")

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokens_module, "_encode", boom)
    with pytest.raises(KeyboardInterrupt):
        build_token_file([corpus], tok, tmp_path / "out", num_workers=0)
    with pytest.raises(FileNotFoundError, match="build did not finish"):
        TokenFile(tmp_path / "out")


def test_dtype_follows_vocab_size():
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32


def test_long_documents_are_encoded_in_pieces_to_the_same_file(tmp_path, tok, monkeypatch):
    import lmforge.tokenizer as tokenizing

    long_docs = [" ".join(TEXTS[i : i + 20]) for i in range(0, 40, 10)]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*long_docs, *TEXTS]))
    whole = build_token_file([path], tok, tmp_path / "whole", num_workers=0)
    assert tok.pieces_are_exact()
    monkeypatch.setattr(tokenizing, "PIECE_CHARS", 50)  # the long documents go in pieces
    monkeypatch.setattr(tokens_module, "CHUNK_CHARS", 300)  # chunks bounded by characters
    pieces = build_token_file([path], tok, tmp_path / "pieces", num_workers=0)
    assert pieces.num_tokens == whole.num_tokens and pieces.num_docs == len(long_docs) + 40
    for name in ("tokens.bin", "doc_offsets.npy"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "pieces" / name).read_bytes()
    assert (
        build_token_file([path], tok, tmp_path / "two", num_workers=2).num_tokens
        == whole.num_tokens
    )
    assert (tmp_path / "two" / "tokens.bin").read_bytes() == (
        tmp_path / "whole" / "tokens.bin"
    ).read_bytes()
    # the data report records the peak memory, on screen and in the index
    assert pieces.report.peak_memory_bytes > 10 * 2**20
    assert "peak memory" in pieces.report.summary()
    index = json.loads((tmp_path / "pieces" / "index.json").read_text())
    assert index["report"]["peak_memory_bytes"] == pieces.report.peak_memory_bytes


def test_no_documents_fails_and_leaves_no_cache(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": ""}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: no documents to tokenize"):
        build_token_file([path], tok, tmp_path / "out", num_workers=0)
    assert not (tmp_path / "out" / "index.json").exists()


def test_skip_bad_is_part_of_the_cache_key(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    assert (
        build_token_file([path], tok, tmp_path / "out", num_workers=0, skip_bad=True).num_docs == 1
    )
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing field 'text'"):  # not the cache
        build_token_file([path], tok, tmp_path / "out", num_workers=0)


def test_fingerprint_hashes_contents_but_trusts_old_unchanged_files(tmp_path, monkeypatch):
    from lmforge.data.tokens import source_fingerprint

    path = tmp_path / "a.txt"
    path.write_text("hello")
    first = source_fingerprint([path])
    assert first["files"][0]["sha256"] == hashlib.sha256(b"hello").hexdigest()
    hashed = []
    real = tokens_module.file_sha256
    monkeypatch.setattr(tokens_module, "file_sha256", lambda p: hashed.append(p) or real(p))
    source_fingerprint([path], first)  # racy: modified within the slack of the fingerprint
    assert hashed == [path]
    os.utime(path, ns=(1, 1))  # an old file ...
    old = source_fingerprint([path])
    hashed.clear()
    assert source_fingerprint([path], old)["files"] == old["files"]
    assert hashed == []  # ... unchanged since: its known hash is kept, the file not reread
    path.write_text("HELLO")  # the same size: the new mtime gives it away
    assert source_fingerprint([path], old)["files"][0]["sha256"] != old["files"][0]["sha256"]


def test_fingerprint_of_a_cache_written_by_an_older_version_rehashes(tmp_path):
    """An older index stored ``files`` as a list: its fingerprint is ignored, not a crash."""
    from lmforge.data.tokens import source_fingerprint

    path = tmp_path / "a.txt"
    path.write_text("hello")
    for stale in ([{"path": str(path)}], "junk", 3):
        fresh = source_fingerprint([path], stale)
        assert fresh["files"][0]["sha256"] == hashlib.sha256(b"hello").hexdigest()
