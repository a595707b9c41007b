"""Pretraining data: tokenize a corpus once into a memory-mapped token file.

    >>> info = build_token_file(["corpus/"], tokenizer, "cache/tokens")   # multiprocess
    >>> data = TokenFile("cache/tokens")
    >>> data.tokens[:10], data.doc_offsets[:3], data.num_tokens

The folder holds ``tokens.bin`` (every document's ids back to back: ``<bos> text <eos>``,
uint16 when the vocabulary fits in 16 bits, else uint32), ``doc_offsets.npy`` (int64,
``num_docs + 1`` boundaries, so document i is ``tokens[offsets[i]:offsets[i + 1]]``) and
``index.json`` (vocab size, dtype, counts, the source files with sizes and mtimes, and a
hash of the tokenizer). ``index.json`` is written last and atomically: a folder with an
index is complete. Building again with unchanged inputs and tokenizer reuses the cache.

Workers tokenize chunks of documents in parallel; `Pool.imap` returns the chunks in input
order, so the file is identical whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.sources import DataError, DataReport, input_files, iter_texts, read_records
from lmforge.io import atomic_path, atomic_write_json, read_json
from lmforge.tokenizer import Tokenizer

TOKENS_FILE, OFFSETS_FILE, INDEX_FILE = "tokens.bin", "doc_offsets.npy", "index.json"
FORMAT_VERSION = 1
CHUNK_DOCS = 512  # documents per worker task: large enough to amortise pickling


@dataclass
class TokenFileInfo:
    """What `build_token_file` produced (or found cached)."""

    path: Path
    num_tokens: int
    num_docs: int
    vocab_size: int
    dtype: str
    reused: bool
    report: DataReport = field(default_factory=DataReport)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab ≤ 65535), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """SHA-256 of the tokenizer's vocabulary, merges, pipeline and special tokens."""
    payload = tokenizer.backend.to_str() + json.dumps(tokenizer.special_tokens, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def source_fingerprint(files: Iterable[Path]) -> list[dict[str, Any]]:
    """Path, size and mtime of every input file (every file inside a dataset folder)."""
    out = []
    for path in files:
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for member in members:
            stat = member.stat()
            out.append({"path": str(member.resolve()), "size": stat.st_size,
                        "mtime_ns": stat.st_mtime_ns})  # fmt: skip
    return out


def build_token_file(
    paths: Sequence[str | os.PathLike],
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    *,
    num_workers: int | None = None,
    append_eos: bool = True,
    text_field: str = "text",
    txt_docs: str = "paragraph",
    skip_bad: bool = False,
) -> TokenFileInfo:
    """Tokenize the text documents in ``paths`` into ``out_dir`` (see the module docstring).

    Each document becomes ``encode(text, add_special_tokens=True)`` (a leading bos when the
    tokenizer adds one) plus the eos id when ``append_eos``. ``num_workers`` processes
    tokenize in parallel (default: the CPU count, at most 8; 0 or 1: in this process).
    Bad records raise `DataError` naming file and line, or are skipped and counted with
    ``skip_bad``; empty documents are counted and left out. The cache in ``out_dir`` is
    reused when the sources, tokenizer and options are unchanged.
    """
    out = Path(out_dir)
    files = input_files(paths)
    vocab_size = tokenizer.vocab_size
    dtype = token_dtype(vocab_size)
    if append_eos and tokenizer.eos_token_id is None:
        raise ValueError("append_eos=True but the tokenizer has no eos token")
    key = {
        "version": FORMAT_VERSION,
        "sources": source_fingerprint(files),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "append_eos": append_eos,
        "text_field": text_field,
        "txt_docs": txt_docs,
    }
    cached = _cached_info(out, key)
    if cached is not None:
        return cached

    (out / INDEX_FILE).unlink(missing_ok=True)  # from here on the folder is incomplete
    report = DataReport()
    records = read_records(
        files, schema="text", skip_bad=skip_bad, report=report, text_field=text_field,
        txt_docs=txt_docs,
    )  # fmt: skip
    eos = tokenizer.eos_token_id if append_eos else None
    lengths: list[int] = []
    with atomic_path(out / TOKENS_FILE) as tmp, open(tmp, "wb") as sink:
        chunks = _chunks(iter_texts(records), report)
        for flat, chunk_lengths in _tokenized_chunks(chunks, tokenizer, eos, num_workers):
            sink.write(flat.astype(dtype).tobytes())
            lengths += chunk_lengths.tolist()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    with atomic_path(out / OFFSETS_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, offsets)
    index = {
        **key,
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "num_tokens": int(offsets[-1]),
        "num_docs": len(lengths),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "report": report.to_dict(),
    }
    atomic_write_json(out / INDEX_FILE, index)
    return TokenFileInfo(out, index["num_tokens"], len(lengths), vocab_size, dtype.name, False,
                         report)  # fmt: skip


def _cached_info(out: Path, key: dict[str, Any]) -> TokenFileInfo | None:
    if not (out / INDEX_FILE).is_file():
        return None
    try:
        index = read_json(out / INDEX_FILE)
    except ValueError:
        return None
    if any(index.get(k) != v for k, v in key.items()):
        return None
    size = (out / TOKENS_FILE).stat().st_size if (out / TOKENS_FILE).is_file() else -1
    if size != index["num_tokens"] * np.dtype(index["dtype"]).itemsize:
        return None
    report = DataReport(kept=index["report"]["kept"])
    report.skipped.update(index["report"]["skipped"])
    report.counts.update(index["report"]["counts"])
    return TokenFileInfo(out, index["num_tokens"], index["num_docs"], index["vocab_size"],
                         index["dtype"], True, report)  # fmt: skip


def _chunks(texts: Iterator[str], report: DataReport) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        if not text:
            report.count("empty documents left out")
            continue
        chunk.append(text)
        if len(chunk) == CHUNK_DOCS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Per-process tokenizer state for pool workers (set once by `_init_worker`).
_WORKER: dict[str, Any] = {}


def _init_worker(backend_json: str, special_tokens: dict[str, str], eos: int | None) -> None:
    from tokenizers import Tokenizer as Backend

    _WORKER["tokenizer"] = Tokenizer(Backend.from_str(backend_json), special_tokens, None)
    _WORKER["eos"] = eos


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _encode(_WORKER["tokenizer"], _WORKER["eos"], texts)


def _encode(
    tokenizer: Tokenizer, eos: int | None, texts: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(all ids back to back, per-document lengths) of ``texts``."""
    docs = tokenizer.encode_batch(texts, add_special_tokens=True)
    if eos is not None:
        docs = [[*d, eos] for d in docs]
    flat = np.fromiter((t for d in docs for t in d), dtype=np.int64)
    return flat, np.array([len(d) for d in docs], dtype=np.int64)


def _tokenized_chunks(chunks, tokenizer: Tokenizer, eos: int | None, num_workers: int | None):
    workers = min(os.cpu_count() or 1, 8) if num_workers is None else num_workers
    if workers <= 1:
        for chunk in chunks:
            yield _encode(tokenizer, eos, chunk)
        return
    init = (tokenizer.backend.to_str(), tokenizer.special_tokens, eos)
    with multiprocessing.get_context().Pool(workers, _init_worker, init) as pool:
        yield from pool.imap(_encode_chunk, chunks)


class TokenFile:
    """A token folder written by `build_token_file`, memory-mapped read-only."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not (self.path / INDEX_FILE).is_file():
            raise FileNotFoundError(
                f"{self.path}: no {INDEX_FILE} (not a token folder, or its build did not finish)"
            )
        self.index = read_json(self.path / INDEX_FILE, "token index")
        self.num_tokens: int = self.index["num_tokens"]
        self.num_docs: int = self.index["num_docs"]
        self.vocab_size: int = self.index["vocab_size"]
        self.dtype = np.dtype(self.index["dtype"])
        expected = self.num_tokens * self.dtype.itemsize
        size = (self.path / TOKENS_FILE).stat().st_size
        if size != expected:
            raise DataError(f"{self.path / TOKENS_FILE}: {size} bytes, index says {expected}")
        # np.memmap cannot map an empty file; an empty corpus is an empty array.
        self.tokens = (
            np.memmap(self.path / TOKENS_FILE, dtype=self.dtype, mode="r")
            if self.num_tokens
            else np.zeros(0, dtype=self.dtype)
        )
        self.doc_offsets: np.ndarray = np.load(self.path / OFFSETS_FILE, mmap_mode="r")
        if len(self.doc_offsets) != self.num_docs + 1:
            raise DataError(f"{self.path / OFFSETS_FILE}: does not match {INDEX_FILE}")

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i``."""
        return np.asarray(self.tokens[self.doc_offsets[i] : self.doc_offsets[i + 1]])

    def __len__(self) -> int:
        return self.num_docs
