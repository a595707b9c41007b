"""Sequence packing without padding: documents share rows of ``seq_len`` tokens, apart.

Every row is a list of `Segment`s (a slice of one document or example). When a row becomes
tensors, ``position_ids`` restart at 0 for every segment and ``document_ids`` number the
segments of the row, so attention never crosses a boundary (the model builds a
block-diagonal causal mask, or uses varlen flash attention) and no padding is computed
inside a document. The first token of every segment gets label -100: nothing is predicted
across a boundary. A row that is not full ends in *filler* (``pad_id``, label -100, its own
document id), which only ever attends to itself.

Two strategies:

* greedy (pretraining): concatenate documents and cut every ``seq_len`` tokens; long
  documents continue in the next row (as in the LLaMA recipe, Touvron et al., 2023).
  Without splitting it is next-fit: a document that does not fit starts a new row.
* best-fit decreasing (SFT): place pieces longest first into the fullest row that still
  has room (Johnson, 1973; as in Ding et al., 2024, "Fewer Truncations Improve Language
  Modeling"), by default never splitting an example.

Packing efficiency = real tokens ÷ (rows × ``seq_len``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmforge.models.loss import IGNORE_INDEX

STRATEGIES = ("best_fit", "greedy")
TOO_LONG = ("error", "truncate", "drop")


@dataclass(frozen=True)
class Segment:
    """Tokens ``[start, start + length)`` of document / example ``index``."""

    index: int
    start: int
    length: int


Row = list[Segment]


@dataclass
class PackingReport:
    """What packing did: rows made, real vs total tokens, examples truncated or dropped."""

    rows: int = 0
    real_tokens: int = 0
    total_tokens: int = 0
    truncated: int = 0
    dropped: int = 0

    @property
    def efficiency(self) -> float:
        """Real tokens ÷ all tokens in the rows (1.0 = no filler)."""
        return self.real_tokens / self.total_tokens if self.total_tokens else 0.0

    def summary(self) -> str:
        text = (
            f"packed {self.real_tokens:,} tokens into {self.rows:,} rows "
            f"(efficiency {self.efficiency:.1%})"
        )
        extra = [f"{n} truncated" for n in [self.truncated] if n]
        extra += [f"{n} dropped as too long" for n in [self.dropped] if n]
        return text + (f"; {', '.join(extra)}" if extra else "")


# ----------------------------------------------------------------------------- row layout


def window_segments(doc_offsets: np.ndarray, start: int, stop: int) -> Row:
    """Segments of the token window ``[start, stop)`` of a stream of documents whose
    boundaries are ``doc_offsets`` (``[0, end_0, end_1, ..., num_tokens]``)."""
    first = int(np.searchsorted(doc_offsets, start, side="right")) - 1
    segments = []
    doc = first
    while doc + 1 < len(doc_offsets) and doc_offsets[doc] < stop:
        lo, hi = max(int(doc_offsets[doc]), start), min(int(doc_offsets[doc + 1]), stop)
        if hi > lo:
            segments.append(Segment(doc, lo - int(doc_offsets[doc]), hi - lo))
        doc += 1
    return segments


def pack_greedy(lengths: Sequence[int], seq_len: int, *, split: bool = True) -> list[Row]:
    """Rows in input order: cut the concatenation every ``seq_len`` tokens (``split``), or
    next-fit without splitting (an item longer than ``seq_len`` is then an error)."""
    _check(lengths, seq_len, split)
    if split:
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        total = int(offsets[-1])
        return [
            window_segments(offsets, s, min(s + seq_len, total)) for s in range(0, total, seq_len)
        ]
    rows: list[Row] = []
    used = seq_len  # forces a new row for the first item
    for i, n in enumerate(lengths):
        if used + n > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(Segment(i, 0, n))
        used += n
    return rows


def pack_best_fit(lengths: Sequence[int], seq_len: int, *, split: bool = False) -> list[Row]:
    """Best-fit decreasing: pieces longest first (ties in input order), each into the row
    with the least room that still fits it, else a new row. ``split`` cuts items longer
    than ``seq_len`` into full rows plus a remainder; otherwise they are an error.

    Rows are kept in buckets by remaining room, so a placement costs O(log seq_len)."""
    _check(lengths, seq_len, split)
    pieces = []
    for i, n in enumerate(lengths):
        pieces += [Segment(i, s, min(seq_len, n - s)) for s in range(0, n, seq_len)]
    pieces.sort(key=lambda p: -p.length)  # stable
    rows: list[Row] = []
    rooms: list[int] = []  # sorted distinct remaining capacities that have rows
    rows_with_room: dict[int, list[int]] = {}
    for piece in pieces:
        j = bisect.bisect_left(rooms, piece.length)
        if j < len(rooms):
            room = rooms[j]
            row = rows_with_room[room].pop()
            if not rows_with_room[room]:
                del rows_with_room[room], rooms[j]
        else:
            room, row = seq_len, len(rows)
            rows.append([])
        rows[row].append(piece)
        left = room - piece.length
        if left > 0:
            if left not in rows_with_room:
                bisect.insort(rooms, left)
                rows_with_room[left] = []
            rows_with_room[left].append(row)
    return rows


def _check(lengths: Sequence[int], seq_len: int, split: bool) -> None:
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be at least 2")
    for i, n in enumerate(lengths):
        if n < 1:
            raise ValueError(f"item {i} is empty (length {n})")
        if n > seq_len and not split:
            raise ValueError(f"item {i} has {n} tokens > seq_len={seq_len} and splitting is off")


def pack(lengths: Sequence[int], seq_len: int, *, strategy: str, split: bool) -> list[Row]:
    """Dispatch to `pack_best_fit` or `pack_greedy`."""
    if strategy == "best_fit":
        return pack_best_fit(lengths, seq_len, split=split)
    if strategy == "greedy":
        return pack_greedy(lengths, seq_len, split=split)
    raise ValueError(f"strategy={strategy!r}: choose one of {', '.join(STRATEGIES)}")


def packing_efficiency(rows: Sequence[Row], seq_len: int) -> float:
    """Real tokens ÷ (rows × seq_len)."""
    real = sum(s.length for row in rows for s in row)
    return real / (len(rows) * seq_len) if rows else 0.0


# ----------------------------------------------------------------------------- tensors

TokensOf = Callable[[int, int, int], Sequence[int] | np.ndarray]


def rows_to_batch(
    rows: Sequence[Row],
    seq_len: int,
    tokens_of: TokensOf,
    labels_of: TokensOf | None = None,
    pad_id: int = 0,
) -> dict[str, torch.Tensor]:
    """``[len(rows), seq_len]`` int64 ``input_ids``, ``labels``, ``position_ids`` and
    ``document_ids`` for ``rows``.

    ``tokens_of(index, start, length)`` returns a segment's token ids; ``labels_of`` its
    labels (unshifted, -100 = no loss; default: the tokens themselves). Each segment's first
    label becomes -100; filler is ``pad_id`` with label -100 and its own document id.
    """
    shape = (len(rows), seq_len)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros(shape, dtype=np.int64)
    document_ids = np.zeros(shape, dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for d, seg in enumerate(row):
            end = at + seg.length
            if end > seq_len:
                raise ValueError(f"row {r} holds {end} tokens > seq_len={seq_len}")
            input_ids[r, at:end] = tokens_of(seg.index, seg.start, seg.length)
            source = labels_of or tokens_of
            labels[r, at + 1 : end] = np.asarray(source(seg.index, seg.start, seg.length))[1:]
            position_ids[r, at:end] = np.arange(seg.length)
            document_ids[r, at:end] = d
            at = end
        position_ids[r, at:] = np.arange(seq_len - at)  # filler: a document of its own
        document_ids[r, at:] = len(row)
    arrays = dict(input_ids=input_ids, labels=labels, position_ids=position_ids)
    return {k: torch.from_numpy(v) for k, v in {**arrays, "document_ids": document_ids}.items()}


def num_loss_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Positions t whose target labels[t + 1] is not -100 (the model's shifted loss count)."""
    return (labels[..., 1:] != IGNORE_INDEX).sum()


def fit_to_length(
    lengths: Sequence[int], seq_len: int, too_long: str, report: PackingReport
) -> tuple[list[int], list[int]]:
    """Apply the ``too_long`` policy ("error", "truncate" or "drop") to items longer than
    ``seq_len``; returns (kept item indices, their lengths) and counts what it did."""
    if too_long not in TOO_LONG:
        raise ValueError(f"too_long={too_long!r}: choose one of {', '.join(TOO_LONG)}")
    kept, kept_lengths = [], []
    for i, n in enumerate(lengths):
        if n > seq_len:
            if too_long == "error":
                raise ValueError(
                    f"example {i} has {n} tokens > seq_len={seq_len}; raise seq_len, or pass "
                    "too_long='truncate' / 'drop', or split_long=True"
                )
            if too_long == "drop":
                report.dropped += 1
                continue
            report.truncated += 1
            n = seq_len
        kept.append(i)
        kept_lengths.append(n)
    return kept, kept_lengths


def pack_token_lists(
    token_lists: Sequence[Sequence[int]],
    seq_len: int,
    *,
    label_lists: Sequence[Sequence[int]] | None = None,
    strategy: str = "greedy",
    split: bool = True,
    too_long: str = "error",
    pad_id: int = 0,
) -> tuple[dict[str, torch.Tensor], PackingReport]:
    """Pack in-memory documents (``token_lists``, with optional per-token ``label_lists``)
    into one batch of rows; returns the tensors and a `PackingReport`."""
    report = PackingReport()
    lengths = [len(t) for t in token_lists]
    if split:
        kept = list(range(len(lengths)))
    else:
        kept, lengths = fit_to_length(lengths, seq_len, too_long, report)
    rows = pack(lengths, seq_len, strategy=strategy, split=split)

    def tokens_of(i: int, start: int, n: int) -> Sequence[int]:
        return token_lists[kept[i]][start : start + n]

    def labels_of(i: int, start: int, n: int) -> Sequence[int]:
        return label_lists[kept[i]][start : start + n]

    batch = rows_to_batch(rows, seq_len, tokens_of, labels_of if label_lists else None, pad_id)
    report.rows = len(rows)
    report.real_tokens = sum(lengths)
    report.total_tokens = len(rows) * seq_len
    return batch, report
