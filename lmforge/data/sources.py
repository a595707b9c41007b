"""Data sources: JSONL, JSON arrays, Parquet, plain text and local Hugging Face `datasets`
folders.

Validation happens here, at the edge. Every record is checked against its schema and
becomes a typed record; a bad one raises `DataError` naming the file, the line (or row, or
array element) and the field — a JSON syntax error also its column (``file:line:column``).
With ``skip_bad=True`` bad records are skipped instead and counted per reason in a
`DataReport` — data is never dropped silently.

Each file type is read by `lmforge.data.readers` (a ``.json`` file is a JSON array of
records, as Stanford Alpaca's ``alpaca_data.json``, or JSON Lines).

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

import resource
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.data.readers import BadRecord, DataError, input_files, raw_records

ROLES = ("system", "user", "assistant", "tool")
SCHEMAS = ("text", "messages", "prompt_completion", "preference", "instruction")


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
    (truncated, dropped for length, ...) added by later stages; the peak memory of the
    stage that measured it (process RSS, bytes; 0 = not measured)."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few skip messages
    max_examples: int = 5
    peak_memory_bytes: int = 0

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
        self.peak_memory_bytes = max(self.peak_memory_bytes, other.peak_memory_bytes)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "skipped": dict(self.skipped), "counts": dict(self.counts),
                "peak_memory_bytes": self.peak_memory_bytes}  # fmt: skip

    def summary(self) -> str:
        """One line per fact, e.g. ``kept 998 records; skipped 2 (invalid JSON: 2)``."""
        lines = [f"kept {self.kept} records"]
        if self.skipped:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
            lines.append(f"skipped {self.num_skipped} ({reasons})")
            lines += [f"  e.g. {m}" for m in self.examples]
        lines += [f"{key}: {n}" for key, n in sorted(self.counts.items())]
        if self.peak_memory_bytes:
            lines.append(f"peak memory {self.peak_memory_bytes / 2**20:,.0f} MiB (process RSS)")
        return "\n".join(lines)


def peak_rss_bytes() -> int:
    """The peak resident memory of this process (``VmHWM``: its own address space, where
    ``ru_maxrss`` on Linux also counts the parent's before ``exec``) or of its finished
    children (pool workers), whichever is larger."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            own = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale)


# ----------------------------------------------------------------------------- reading


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
        for where, raw in raw_records(path, txt_docs, split):
            try:
                if isinstance(raw, BadRecord):
                    raise raw
                if file_schema is None:
                    file_schema = detect_schema(raw, text_field)
                record = _parse(raw, file_schema, text_field, where)
            except BadRecord as bad:
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
        raise BadRecord("not an object", f"expected a JSON object, got {type(record).__name__}")
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
    raise BadRecord(
        "unknown schema",
        f"fields {sorted(keys)} match no schema (need {text_field!r}, 'messages', "
        "'prompt'+'completion', 'prompt'+'chosen'+'rejected' or 'instruction'+'output')",
    )


# ----------------------------------------------------------------------------- validation


def _parse(raw: Any, schema: str, text_field: str, where: str) -> Record:
    if not isinstance(raw, Mapping):
        raise BadRecord("not an object", f"expected a JSON object, got {type(raw).__name__}")
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
            raise BadRecord("missing field", "missing field 'prompt' (needed when 'chosen' / "
                             "'rejected' are strings rather than full conversations)")  # fmt: skip
        return PreferenceRecord(prompt, chosen, rejected, where)
    extra = _string(raw, "input") if raw.get("input") is not None else ""
    return InstructionRecord(_string(raw, "instruction"), _string(raw, "output"), extra, where)


def _field(raw: Mapping[str, Any], name: str) -> Any:
    if name not in raw:
        raise BadRecord("missing field", f"missing field {name!r}")
    return raw[name]


def _string(raw: Mapping[str, Any], name: str) -> str:
    value = _field(raw, name)
    if not isinstance(value, str):
        raise BadRecord("wrong type", f"field {name!r} is {_kind(value)}, not a string")
    return value


def _turns(raw: Mapping[str, Any], name: str) -> Turns:
    value = _field(raw, name)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messages(value, name)
    raise BadRecord("wrong type", f"field {name!r} is {_kind(value)}, not a string or messages")


def _messages(value: Any, name: str) -> tuple[Message, ...]:
    if not isinstance(value, (list, tuple)):
        raise BadRecord("wrong type", f"field {name!r} is {_kind(value)}, not a list of messages")
    if not value:
        raise BadRecord("empty", f"field {name!r} is an empty list")
    checked = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, Mapping):
            raise BadRecord("wrong type", f"field {where!r} is {_kind(message)}, not an object")
        role = message.get("role")
        if role not in ROLES:
            got = "missing" if role is None else repr(role)
            raise BadRecord(
                "bad role", f"field '{where}.role' is {got}; use one of {', '.join(ROLES)}"
            )
        if not isinstance(message.get("content"), str):
            got = "missing" if message.get("content") is None else _kind(message["content"])
            raise BadRecord("wrong type", f"field '{where}.content' is {got}, not a string")
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


def record_texts(record: Record) -> Iterator[str]:
    """Every text field of a record, in order: a text record's text; each message's content
    (and reasoning, when it has one); prompt, completion, chosen and rejected; an Alpaca
    record's instruction, input and output. Empty strings are left out."""
    if isinstance(record, TextRecord):
        parts: tuple[Any, ...] = (record.text,)
    elif isinstance(record, ChatRecord):
        parts = (record.messages,)
    elif isinstance(record, PromptCompletionRecord):
        parts = (record.prompt, record.completion)
    elif isinstance(record, PreferenceRecord):
        parts = (record.prompt, record.chosen, record.rejected)
    elif isinstance(record, InstructionRecord):
        parts = (record.instruction, record.input, record.output)
    else:
        raise TypeError(f"not a record: {type(record).__name__}")
    for part in parts:
        for text in [part] if isinstance(part, str) or part is None else _message_texts(part):
            if text:
                yield text


def _message_texts(messages: Sequence[Message]) -> Iterator[str]:
    for message in messages:
        yield message["content"]
        for key in ("reasoning_content", "thinking", "reasoning"):
            if isinstance(message.get(key), str):
                yield message[key]
