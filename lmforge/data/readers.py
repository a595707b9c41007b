"""Readers of each input type: files and folders → ``(where, raw record)`` pairs, where
``where`` names the file and line (``file:line``), row (``file: row n``), array element
(``file.json[i] (line l)``) or .txt document, and a raw record is a dict to validate
(`lmforge.data.sources`) or a `BadRecord` saying why the line could not be read. JSON syntax
errors keep their line and column (``file:line:column``).

A ``.json`` file is a JSON array of records (Stanford Alpaca's ``alpaca_data.json``),
decoded one element at a time, or JSON Lines when it does not start with ``[`` (what
``Dataset.to_json`` writes). A syntax error inside an array stops the file even with
``skip_bad``: where the next element starts is unknown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

INPUT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_HF_MARKERS = ("dataset_dict.json", "state.json")  # written by `datasets`' save_to_disk


class DataError(ValueError):
    """Unreadable or malformed input data; the message names the file (and line and field)."""


class BadRecord(Exception):
    """A record-level validation failure; the reader adds file and line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------- files


def input_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into the sorted .txt / .jsonl / .json /
    .parquet files to read; a saved Hugging Face dataset folder is kept whole, as one input."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and is_hf_dataset_dir(path):
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in INPUT_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{path}: folder holds no .txt, .jsonl, .json or .parquet files")
            files += found
        elif path.is_file():
            if path.suffix not in INPUT_SUFFIXES:
                raise DataError(
                    f"{path}: unsupported file type (use .txt, .jsonl, .json or .parquet)"
                )
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def is_hf_dataset_dir(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return any((path / marker).is_file() for marker in _HF_MARKERS)


# ----------------------------------------------------------------------------- readers


def raw_records(path: Path, txt_docs: str, split: str) -> Iterator[tuple[str, Any]]:
    """(where, raw record) pairs of one input; a raw record may be a `BadRecord`."""
    if path.is_dir():
        yield from _hf_records(path, split)
    elif path.suffix == ".jsonl":
        yield from _jsonl_records(path)
    elif path.suffix == ".json":
        yield from _json_records(path)
    elif path.suffix == ".parquet":
        yield from _parquet_records(path)
    else:
        yield from _txt_records(path, txt_docs)


def _txt_records(path: Path, txt_docs: str) -> Iterator[tuple[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if txt_docs == "file":
        docs = [text.strip()] if text.strip() else []
    else:
        docs = [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    for i, doc in enumerate(docs, start=1):
        yield f"{path}: document {i}", {"text": doc}


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, BadRecord("not UTF-8", f"not UTF-8 text ({exc.reason})")
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as exc:
                yield f"{where}:{exc.colno}", BadRecord("invalid JSON", f"invalid JSON: {exc.msg}")


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """The elements of a JSON array, decoded one at a time (``file.json[i] (line l)``); a
    file that does not start with ``[`` is read as JSON Lines."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    start = _skip_space(text, 0)
    if not text.startswith("[", start):
        yield from _jsonl_records(path)
        return
    decoder = json.JSONDecoder()
    pos, index = _skip_space(text, start + 1), 0
    if text.startswith("]", pos):
        return
    line, counted = 1, 0  # the line number at offset `counted`, advanced as elements pass
    while True:
        line, counted = line + text.count("\n", counted, pos), pos
        where = f"{path}[{index}] (line {line})"
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON in element "
                            f"{index}: {exc.msg}") from None  # fmt: skip
        yield where, value
        pos = _skip_space(text, pos)
        if text.startswith("]", pos):
            if _skip_space(text, pos + 1) != len(text):
                _json_syntax_error(path, text, _skip_space(text, pos + 1), "extra data after ']'")
            return
        if not text.startswith(",", pos):
            _json_syntax_error(path, text, pos, f"expected ',' or ']' after element {index}")
        pos, index = _skip_space(text, pos + 1), index + 1


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _json_syntax_error(path: Path, text: str, pos: int, message: str) -> None:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    raise DataError(f"{path}:{line}:{column}: invalid JSON: {message}")


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError variants
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield f"{path}: row {row}", record


def _hf_records(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{path}: reading a saved Hugging Face dataset needs `datasets` (pip install datasets)"
        ) from None
    try:
        data = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ...
        raise DataError(f"{path}: not a loadable Hugging Face dataset folder ({exc})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{path}: no split {split!r} (has {', '.join(sorted(data))})")
        data = data[split]
    for row, record in enumerate(data, start=1):
        yield f"{path} [{split}]: row {row}", record
