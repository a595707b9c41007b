"""A byte-level BPE tokenizer trained on text files and folders (``lmforge tokenizer train``),
and the tokenizer a pretraining run trains once and reuses (`cached_tokenizer`).

    tok, num_docs, files = train_tokenizer_on_files(["corpus/", "chats.jsonl"], 4096)
    tok.save("tok/")

A .txt file gives one document per blank-line-separated paragraph (or per file with
``txt_docs="file"``); a .jsonl / .json / Parquet file one document per text field of every
record, whatever its schema (`lmforge.data.sources.record_texts`): the text of a text record
(``text_field``), every message of a chat, prompt and completion, Alpaca's instruction, input
and output. Folders are searched recursively (`lmforge.data.sources.input_files`). Long
documents are trained on in pieces cut at spaces (`lmforge.tokenizer.whitespace_pieces`),
which gives the same tokenizer with memory bounded by the piece.

A cached tokenizer folder holds, besides the tokenizer, ``cache_key.json``: the fingerprint
of what it was trained from (every source file's path, size and content hash, and the settings)
and the SHA-256 of the saved files. It is written last, only after training succeeded (no
documents is an error, never a 0-merge tokenizer), and a folder is reused only when its key
matches and its files hash as written; anything else is trained again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lmforge.data.sources import (
    DataError,
    DataReport,
    input_files,
    peak_rss_bytes,
    read_records,
    record_texts,
)
from lmforge.data.tokens import same_sources, source_fingerprint
from lmforge.io import atomic_write_json, read_json
from lmforge.tokenizer import Tokenizer

CACHE_KEY_FILE = "cache_key.json"
CACHE_VERSION = 1
_HASHED_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def train_tokenizer_on_files(
    paths: Sequence[str | os.PathLike],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    text_field: str = "text",
    txt_docs: str = "paragraph",
    schema: str = "auto",
    skip_bad: bool = False,
    report: DataReport | None = None,
) -> tuple[Tokenizer, int, list[Path]]:
    """Train on every document of ``paths``; returns the tokenizer, the number of documents
    (text fields) and the files read. ``schema`` "auto" reads every text field of whatever
    schema each file has ("text": only ``text_field``). Bad records raise naming file and
    line (or are skipped and counted in ``report`` with ``skip_bad``); no documents is an
    error."""
    files = input_files(paths)
    counts = {"docs": 0}
    report = report if report is not None else DataReport()

    def texts() -> Iterator[str]:
        records = read_records(files, schema=schema, skip_bad=skip_bad, report=report,
                               text_field=text_field, txt_docs=txt_docs)  # fmt: skip
        for record in records:
            for text in record_texts(record):
                counts["docs"] += 1
                yield text

    tok = Tokenizer.train(texts(), vocab_size=vocab_size, min_frequency=min_frequency)
    if counts["docs"] == 0:
        raise DataError(f"no documents found in {', '.join(map(str, files))}")
    return tok, counts["docs"], files


def tokenizer_cache_key(
    paths: Sequence[str | os.PathLike],
    settings: dict[str, Any],
    known: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fingerprint a cached tokenizer must match: the sources (path, size, content hash:
    `lmforge.data.tokens.source_fingerprint`, ``known`` saving rereads) and the settings."""
    return {"version": CACHE_VERSION, "settings": dict(settings),
            "sources": source_fingerprint(input_files(paths), known)}  # fmt: skip


def same_key(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two `tokenizer_cache_key`s agree: same version, settings and source contents."""
    same = all(a.get(k) == b.get(k) for k in ("version", "settings"))
    return same and isinstance(a.get("sources"), dict) and same_sources(a["sources"], b["sources"])


def cached_tokenizer(
    paths: Sequence[str | os.PathLike],
    folder: str | os.PathLike,
    vocab_size: int,
    *,
    min_frequency: int = 2,
    text_field: str = "text",
    txt_docs: str = "paragraph",
    schema: str = "text",
    skip_bad: bool = False,
) -> tuple[Tokenizer, bool, DataReport]:
    """The tokenizer in ``folder`` when its ``cache_key.json`` matches these inputs and
    settings and its files are intact, else one trained on ``paths`` (`train_tokenizer_on_files`)
    and saved there, the key written last. Returns (tokenizer, reused, report)."""
    folder = Path(folder)
    settings = dict(vocab_size=vocab_size, min_frequency=min_frequency, text_field=text_field,
                    txt_docs=txt_docs, schema=schema, skip_bad=skip_bad)  # fmt: skip
    saved = _read_key(folder)
    known = saved["key"].get("sources") if saved and isinstance(saved.get("key"), dict) else None
    key = tokenizer_cache_key(paths, settings, known if isinstance(known, dict) else None)
    if (
        saved is not None
        and same_key(saved.get("key") or {}, key)
        and saved.get("files") == _file_hashes(folder)
    ):
        report = DataReport()
        report.counts.update(saved.get("counts", {}))
        return Tokenizer.from_dir(folder), True, report
    (folder / CACHE_KEY_FILE).unlink(missing_ok=True)  # from here on the folder is not a cache
    report = DataReport()
    tok, num_docs, _ = train_tokenizer_on_files(
        paths, vocab_size, min_frequency=min_frequency, text_field=text_field,
        txt_docs=txt_docs, schema=schema, skip_bad=skip_bad, report=report,
    )  # fmt: skip
    report.count("tokenizer documents", num_docs)
    report.peak_memory_bytes = peak_rss_bytes()
    tok.save(folder)
    atomic_write_json(folder / CACHE_KEY_FILE, {"key": key, "files": _file_hashes(folder),
                                                "counts": dict(report.counts)})  # fmt: skip
    return tok, False, report


def _read_key(folder: Path) -> dict[str, Any] | None:
    try:
        value = read_json(folder / CACHE_KEY_FILE)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _file_hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in _HASHED_FILES if (folder / name).is_file()}  # fmt: skip
