"""Pretraining data: tokenize a corpus once into a memory-mapped token file.

    >>> info = build_token_file(["corpus/"], tokenizer, "cache/tokens")   # multiprocess
    >>> data = TokenFile("cache/tokens")
    >>> data.tokens[:10], data.doc_offsets[:3], data.num_tokens

The folder holds ``tokens.bin`` (every document's ids back to back: ``<bos> text <eos>``,
uint16 when the vocabulary fits in 16 bits, else uint32), ``doc_offsets.npy`` (int64,
``num_docs + 1`` boundaries, so document i is ``tokens[offsets[i]:offsets[i + 1]]``) and
``index.json`` (vocab size, dtype, counts, the cache key, the data report). The cache key
is a fingerprint of everything the tokens depend on: every source file's path, size and
content hash (`source_fingerprint`), a hash of the tokenizer, and the options (eos, text field, .txt documents,
skip_bad). ``index.json`` is written last and atomically, and only when the build succeeded
(a corpus without a single document is an error, not an empty cache): a folder with an index
is complete, a folder without one is rebuilt, and an index whose key or file sizes do not
match is never reused.

Workers tokenize chunks of documents in parallel (a chunk: at most ``CHUNK_DOCS`` documents
and about ``CHUNK_CHARS`` characters); `Pool.imap` returns the chunks in input order, so the
file is identical whatever the number of workers. A document longer than
`lmforge.tokenizer.PIECE_CHARS` is encoded piece by piece (`Tokenizer.encode_long`: the
same ids, memory bounded by the piece), so memory follows the chunk, not the corpus or its
longest document; the report records the peak memory (``peak memory``, process RSS).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge import tokenizer as tokenizing
from lmforge.data.sources import (
    DataError,
    DataReport,
    input_files,
    iter_texts,
    peak_rss_bytes,
    read_records,
)
from lmforge.io import atomic_path, atomic_write_json, read_json
from lmforge.tokenizer import Tokenizer

TOKENS_FILE, OFFSETS_FILE, INDEX_FILE = "tokens.bin", "doc_offsets.npy", "index.json"
FORMAT_VERSION = 2
CHUNK_DOCS = 512  # documents per worker task: large enough to amortise pickling
CHUNK_CHARS = 1 << 22  # ... and at most about this many characters (one long document alone)
MTIME_SLACK_NS = 2 * 10**9  # file systems with coarse timestamps: a 2 s window is "racy"


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


def source_fingerprint(
    files: Iterable[Path], known: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The fingerprint of the input files: path, size, mtime and SHA-256 of every file (every
    file inside a dataset folder), and when it was taken (``taken_ns``).

    ``known`` (a fingerprint taken earlier) saves reading files: a file whose path, size and
    mtime are unchanged and whose mtime is older than ``known["taken_ns"]`` by more than
    ``MTIME_SLACK_NS`` keeps its known hash (the racy-git rule: a file modified after the
    fingerprint was taken has a newer mtime; a file modified in the same clock tick as it was
    hashed is "racy" and is hashed again), so an unchanged corpus is not reread every run."""
    taken_ns = time.time_ns()
    if not isinstance(known, Mapping):  # a cache written by an older version: rehash all
        known = None
    trusted_before = (known or {}).get("taken_ns", 0) - MTIME_SLACK_NS
    seen = {e["path"]: e for e in (known or {}).get("files", []) if isinstance(e, dict)}
    out = []
    for path in files:
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for member in members:
            stat = member.stat()
            entry = {"path": str(member.resolve()), "size": stat.st_size,
                     "mtime_ns": stat.st_mtime_ns}  # fmt: skip
            old = seen.get(entry["path"], {})
            trusted = stat.st_mtime_ns < trusted_before and all(
                old.get(k) == entry[k] for k in ("size", "mtime_ns")
            )
            entry["sha256"] = old.get("sha256") if trusted else file_sha256(member)
            out.append(entry)
    return {"files": out, "taken_ns": taken_ns}


def same_sources(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two `source_fingerprint`s describe the same files with the same contents."""
    return a.get("files") == b.get("files")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
    index = _read_index(out)
    key = {
        "version": FORMAT_VERSION,
        "sources": source_fingerprint(files, index.get("sources") if index else None),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "append_eos": append_eos,
        "text_field": text_field,
        "txt_docs": txt_docs,
        "skip_bad": skip_bad,
    }
    cached = _cached_info(out, index, key)
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
            sink.write(flat.astype(dtype, copy=False).data)  # no extra bytes copy
            lengths += chunk_lengths.tolist()
    if not lengths:  # fail before an index makes the empty folder look like a valid cache
        raise DataError(
            f"{', '.join(map(str, files))}: no documents to tokenize ({report.summary()})".replace(
                "\n", "; "
            )
        )
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    report.peak_memory_bytes = peak_rss_bytes()
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


def _read_index(out: Path) -> dict[str, Any] | None:
    try:
        index = read_json(out / INDEX_FILE)
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


def _cached_info(
    out: Path, index: dict[str, Any] | None, key: dict[str, Any]
) -> TokenFileInfo | None:
    if index is None or not isinstance(index.get("sources"), dict):
        return None
    if not same_sources(index["sources"], key["sources"]):
        return None
    if any(index.get(k) != v for k, v in key.items() if k != "sources"):
        return None
    size = (out / TOKENS_FILE).stat().st_size if (out / TOKENS_FILE).is_file() else -1
    if size != index["num_tokens"] * np.dtype(index["dtype"]).itemsize:
        return None
    report = DataReport(kept=index["report"]["kept"])
    report.skipped.update(index["report"]["skipped"])
    report.counts.update(index["report"]["counts"])
    report.peak_memory_bytes = index["report"].get("peak_memory_bytes", 0)
    return TokenFileInfo(out, index["num_tokens"], index["num_docs"], index["vocab_size"],
                         index["dtype"], True, report)  # fmt: skip


def _chunks(texts: Iterator[str], report: DataReport) -> Iterator[list[str]]:
    """Documents in chunks of at most ``CHUNK_DOCS`` documents and about ``CHUNK_CHARS``
    characters (a longer document is a chunk of its own)."""
    chunk: list[str] = []
    chars = 0
    for text in texts:
        if not text:
            report.count("empty documents left out")
            continue
        if chunk and chars + len(text) > CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
        chunk.append(text)
        chars += len(text)
        if len(chunk) == CHUNK_DOCS:
            yield chunk
            chunk, chars = [], 0
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
    """(all ids back to back, per-document lengths) of ``texts``; documents longer than
    `PIECE_CHARS` are encoded piece by piece (`Tokenizer.encode_long`, the same ids)."""
    short = [i for i, text in enumerate(texts) if len(text) <= tokenizing.PIECE_CHARS]
    batch = dict(zip(short, tokenizer.encode_batch([texts[i] for i in short], True)))
    tail = [] if eos is None else [eos]
    parts, lengths = [], []
    for i, text in enumerate(texts):
        pieces = [batch.pop(i)] if i in batch else tokenizer.encode_pieces(text, True)
        length = 0
        for ids in itertools.chain(pieces, [tail]):  # one piece's Python ints at a time
            parts.append(np.array(ids, dtype=np.uint32))  # ids < 2**32 (`token_dtype`)
            length += len(ids)
        lengths.append(length)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    return flat, np.array(lengths, dtype=np.int64)


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
