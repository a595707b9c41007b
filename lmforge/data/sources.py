"""Text data sources: .txt files (one document per paragraph or per file) and JSONL records.

Validation happens here, at the edge: a bad record raises `DataError` naming file and line.
(The training-engine issue extends this module with Parquet, chat / preference schemas and
skip-and-count options.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

INPUT_SUFFIXES = (".txt", ".jsonl")


class DataError(ValueError):
    """Unreadable or malformed input data; the message names the file (and line)."""


def input_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into the sorted .txt / .jsonl files to read."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in INPUT_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{path}: folder holds no .txt or .jsonl files")
            files += found
        elif path.is_file():
            if path.suffix not in INPUT_SUFFIXES:
                raise DataError(f"{path}: unsupported file type (use .txt or .jsonl)")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def read_documents(path: Path, text_field: str = "text", txt_docs: str = "paragraph"):
    """Yield the documents of one .txt or .jsonl file; bad lines raise naming file:line."""
    try:
        if path.suffix == ".jsonl":
            yield from _jsonl_documents(path, text_field)
        elif txt_docs == "file":
            text = path.read_text(encoding="utf-8").strip()
            yield from [text] if text else []
        else:
            paragraphs = re.split(r"\n[ \t]*\n", path.read_text(encoding="utf-8"))
            yield from (p.strip() for p in paragraphs if p.strip())
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
            if not isinstance(record, dict) or text_field not in record:
                raise DataError(f"{path}:{lineno}: missing field {text_field!r}")
            if not isinstance(record[text_field], str):
                kind = type(record[text_field]).__name__
                raise DataError(f"{path}:{lineno}: field {text_field!r} is {kind}, not a string")
            yield record[text_field]
