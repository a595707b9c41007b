"""Data sources: JSONL, Parquet, plain text and local Hugging Face `datasets` folders.

Validation happens here, at the edge. Every record is checked against its schema and
becomes a typed record; a bad one raises `DataError` naming the file, the line (or row)
and the field. With ``skip_bad=True`` bad records are skipped instead and counted per
reason in a `DataReport` — data is never dropped silently.

Schemas (auto-detected per file from its first record, or forced with ``schema=``):

| schema              | fields                                                   | record            |
|---------------------|----------------------------------------------------------|-------------------|
| ``text``            | ``text``                                                 | `TextRecord`      |
| ``messages``        | ``messages``: [{role, content}], roles system/user/assistant/tool | `ChatRecord` |
| ``prompt_completion`` | ``prompt``, ``completion`` (strings or message lists)  | `PromptCompletionRecord` |
| ``preference``      | ``prompt``, ``chosen``, ``rejected`` (strings or message lists) | `PreferenceRecord` |
| ``instruction``     | ``instruction``, ``output``, optional ``input`` (Alpaca)  | `InstructionRecord` |

    >>> records, report = load_records(["data/"], skip_bad=True)
    >>> print(report.summary())
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INPUT_SUFFIXES = (".txt", ".jsonl", ".parquet")
ROLES = ("system", "user", "assistant", "tool")
SCHEMAS = ("text", "messages", "prompt_completion", "preference", "instruction")
_HF_MARKERS = ("dataset_dict.json", "state.json")  # written by `datasets`' save_to_disk


class DataError(ValueError):
    """Unreadable or malformed input data; the message names the file (and line and field)."""


# ----------------------------------------------------------------------------- records

Message = dict[str, Any]
Turns = str | tuple[Message, ...]  # a plain string or a validated message list


@dataclass(frozen=True)
class TextRecord:
    text: str
    where: str = field(default="", compare=False)  # "file:line", for later error messages


@dataclass(frozen=True)
class ChatRecord:
    messages: tuple[Message, ...]
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class PromptCompletionRecord:
    prompt: Turns
    completion: Turns
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class PreferenceRecord:
    """``prompt`` is None when chosen/rejected are full conversations (implicit prompt)."""

    prompt: Turns | None
    chosen: Turns
    rejected: Turns
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class InstructionRecord:
    """Alpaca-style (Taori et al., 2023): an instruction, optional input, and the output."""

    instruction: str
    output: str
    input: str = ""
    where: str = field(default="", compare=False)


Record = TextRecord | ChatRecord | PromptCompletionRecord | PreferenceRecord | InstructionRecord


@dataclass
class DataReport:
    """What happened to the data: records kept, skipped (per reason), and other counts
    (truncated, dropped for length, ...) added by later stages."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few skip messages
    max_examples: int = 5

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(message)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: DataReport) -> DataReport:
        self.kept += other.kept
        self.skipped.update(other.skipped)
        self.counts.update(other.counts)
        self.examples += other.examples[: max(0, self.max_examples - len(self.examples))]
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "skipped": dict(self.skipped), "counts": dict(self.counts)}

    def summary(self) -> str:
        """One line per fact, e.g. ``kept 998 records; skipped 2 (invalid JSON: 2)``."""
        lines = [f"kept {self.kept} records"]
        if self.skipped:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
            lines.append(f"skipped {self.num_skipped} ({reasons})")
            lines += [f"  e.g. {m}" for m in self.examples]
        lines += [f"{key}: {n}" for key, n in sorted(self.counts.items())]
        return "\n".join(lines)


class _BadRecord(Exception):
    """A record-level validation failure; the reader adds file and line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------- files


def input_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into the sorted .txt / .jsonl / .parquet files
    to read; a saved Hugging Face dataset folder is kept whole, as one input."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and is_hf_dataset_dir(path):
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in INPUT_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{path}: folder holds no .txt, .jsonl or .parquet files")
            files += found
        elif path.is_file():
            if path.suffix not in INPUT_SUFFIXES:
                raise DataError(f"{path}: unsupported file type (use .txt, .jsonl or .parquet)")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def is_hf_dataset_dir(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return any((path / marker).is_file() for marker in _HF_MARKERS)


def read_documents(path: Path, text_field: str = "text", txt_docs: str = "paragraph"):
    """Yield the text documents of one input (see `input_files`); bad records raise naming
    file and line. ``txt_docs``: one document per "paragraph" or per "file" of a .txt."""
    for record in read_records([path], schema="text", text_field=text_field, txt_docs=txt_docs):
        yield record.text


def read_records(
    paths: Sequence[str | Path],
    *,
    schema: str = "auto",
    skip_bad: bool = False,
    report: DataReport | None = None,
    text_field: str = "text",
    txt_docs: str = "paragraph",
    split: str = "train",
) -> Iterator[Record]:
    """Yield validated records from files and folders, in file order.

    Args:
        schema: "auto" (detected per file from its first record) or one of `SCHEMAS`.
        skip_bad: skip malformed records (counted per reason in ``report``) instead of
            raising `DataError`.
        report: a `DataReport` to fill (kept / skipped counts); optional.
        text_field: the field holding the text for the "text" schema.
        txt_docs: a .txt file's documents are its "paragraph"s or the whole "file".
        split: the split to read from a saved `DatasetDict`.
    """
    if schema != "auto" and schema not in SCHEMAS:
        raise ValueError(f"schema={schema!r}: choose 'auto' or one of {', '.join(SCHEMAS)}")
    if txt_docs not in ("paragraph", "file"):
        raise ValueError(f"txt_docs={txt_docs!r}: choose 'paragraph' or 'file'")
    report = report if report is not None else DataReport()
    for path in input_files(paths):
        file_schema = None if schema == "auto" else schema
        for where, raw in _raw_records(path, txt_docs, split):
            try:
                if isinstance(raw, _BadRecord):
                    raise raw
                if file_schema is None:
                    file_schema = detect_schema(raw, text_field)
                record = _parse(raw, file_schema, text_field, where)
            except _BadRecord as bad:
                message = f"{where}: {bad}"
                if not skip_bad:
                    raise DataError(message) from None
                report.skip(bad.reason, message)
                continue
            report.kept += 1
            yield record


def load_records(paths: Sequence[str | Path], **kwargs: Any) -> tuple[list[Record], DataReport]:
    """`read_records` into a list, with its `DataReport`."""
    report = DataReport()
    records = list(read_records(paths, report=report, **kwargs))
    return records, report


def detect_schema(record: Mapping[str, Any], text_field: str = "text") -> str:
    """The schema a record's fields say it has (see the module table)."""
    if not isinstance(record, Mapping):
        raise _BadRecord("not an object", f"expected a JSON object, got {type(record).__name__}")
    keys = set(record)
    if "messages" in keys:
        return "messages"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if {"instruction", "output"} <= keys:
        return "instruction"
    if text_field in keys:
        return "text"
    raise _BadRecord(
        "unknown schema",
        f"fields {sorted(keys)} match no schema (need {text_field!r}, 'messages', "
        "'prompt'+'completion', 'prompt'+'chosen'+'rejected' or 'instruction'+'output')",
    )


# ----------------------------------------------------------------------------- readers


def _raw_records(path: Path, txt_docs: str, split: str) -> Iterator[tuple[str, Any]]:
    """(where, raw record) pairs of one input; a raw record may be a `_BadRecord`."""
    if path.is_dir():
        yield from _hf_records(path, split)
    elif path.suffix == ".jsonl":
        yield from _jsonl_records(path)
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
                yield where, _BadRecord("not UTF-8", f"not UTF-8 text ({exc.reason})")
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as exc:
                yield where, _BadRecord("invalid JSON", f"invalid JSON: {exc.msg}")


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


# ----------------------------------------------------------------------------- validation


def _parse(raw: Any, schema: str, text_field: str, where: str) -> Record:
    if not isinstance(raw, Mapping):
        raise _BadRecord("not an object", f"expected a JSON object, got {type(raw).__name__}")
    if schema == "text":
        return TextRecord(_string(raw, text_field), where)
    if schema == "messages":
        return ChatRecord(_messages(_field(raw, "messages"), "messages"), where)
    if schema == "prompt_completion":
        return PromptCompletionRecord(_turns(raw, "prompt"), _turns(raw, "completion"), where)
    if schema == "preference":
        chosen, rejected = _turns(raw, "chosen"), _turns(raw, "rejected")
        prompt = _turns(raw, "prompt") if raw.get("prompt") is not None else None
        if prompt is None and (isinstance(chosen, str) or isinstance(rejected, str)):
            raise _BadRecord("missing field", "missing field 'prompt' (needed when 'chosen' / "
                             "'rejected' are strings rather than full conversations)")  # fmt: skip
        return PreferenceRecord(prompt, chosen, rejected, where)
    extra = _string(raw, "input") if raw.get("input") is not None else ""
    return InstructionRecord(_string(raw, "instruction"), _string(raw, "output"), extra, where)


def _field(raw: Mapping[str, Any], name: str) -> Any:
    if name not in raw:
        raise _BadRecord("missing field", f"missing field {name!r}")
    return raw[name]


def _string(raw: Mapping[str, Any], name: str) -> str:
    value = _field(raw, name)
    if not isinstance(value, str):
        raise _BadRecord("wrong type", f"field {name!r} is {_kind(value)}, not a string")
    return value


def _turns(raw: Mapping[str, Any], name: str) -> Turns:
    value = _field(raw, name)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messages(value, name)
    raise _BadRecord("wrong type", f"field {name!r} is {_kind(value)}, not a string or messages")


def _messages(value: Any, name: str) -> tuple[Message, ...]:
    if not isinstance(value, (list, tuple)):
        raise _BadRecord("wrong type", f"field {name!r} is {_kind(value)}, not a list of messages")
    if not value:
        raise _BadRecord("empty", f"field {name!r} is an empty list")
    checked = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, Mapping):
            raise _BadRecord("wrong type", f"field {where!r} is {_kind(message)}, not an object")
        role = message.get("role")
        if role not in ROLES:
            got = "missing" if role is None else repr(role)
            raise _BadRecord(
                "bad role", f"field '{where}.role' is {got}; use one of {', '.join(ROLES)}"
            )
        if not isinstance(message.get("content"), str):
            got = "missing" if message.get("content") is None else _kind(message["content"])
            raise _BadRecord("wrong type", f"field '{where}.content' is {got}, not a string")
        checked.append({k: v for k, v in message.items() if v is not None})
    return tuple(checked)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def iter_texts(records: Iterable[Record]) -> Iterator[str]:
    """The texts of `TextRecord`s; any other record is an error naming where it came from."""
    for record in records:
        if not isinstance(record, TextRecord):
            raise DataError(f"{record.where}: expected a text record, got {type(record).__name__}")
        yield record.text
