"""A byte-level BPE tokenizer trained on text files and folders (``lmforge tokenizer train``).

    tok, num_docs, files = train_tokenizer_on_files(["corpus/", "extra.jsonl"], 4096)
    tok.save("tok/")

A .txt file gives one document per blank-line-separated paragraph (or per file with
``txt_docs="file"``); a .jsonl file one document per line, from its ``text_field``. Folders
are searched recursively (`lmforge.data.sources.input_files`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from lmforge.data.sources import DataError, input_files, read_documents
from lmforge.tokenizer import Tokenizer


def train_tokenizer_on_files(
    paths: Sequence[str | os.PathLike],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    text_field: str = "text",
    txt_docs: str = "paragraph",
) -> tuple[Tokenizer, int, list[Path]]:
    """Train on every document of ``paths``; returns the tokenizer, the number of documents
    and the files read. Bad records raise naming file and line; no documents is an error."""
    files = input_files(paths)
    counts = {"docs": 0}

    def texts() -> Iterator[str]:
        for file in files:
            for doc in read_documents(file, text_field, txt_docs):
                counts["docs"] += 1
                yield doc

    tok = Tokenizer.train(texts(), vocab_size=vocab_size, min_frequency=min_frequency)
    if counts["docs"] == 0:
        raise DataError(f"no documents found in {', '.join(map(str, files))}")
    return tok, counts["docs"], files
