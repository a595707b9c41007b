"""Training data loaders: endless, deterministic, shardable, exactly resumable.

    >>> loader = PretrainLoader("cache/tokens", seq_len=1024, batch_size=8, rank=r, world_size=w)
    >>> loader = SFTLoader(examples, seq_len=2048, batch_size=4, rank=r, world_size=w)
    >>> batch = next(iter(loader))   # input_ids, labels, position_ids, document_ids [B, T]
    ...                              # (int64) and num_loss_tokens (0-dim int64)

Both loaders see the data as one endless *row stream*: epoch 0's packed rows in a shuffled
order, then epoch 1's, ... (the shuffle of epoch e is drawn from ``(seed, e)`` alone). Every
yield takes the next *global batch* of ``batch_size × world_size`` rows from the stream —
crossing into the next epoch when one ends, so nothing is dropped — and rank ``r`` keeps
rows ``[r·batch_size, (r+1)·batch_size)`` of it. Ranks are therefore disjoint, equally
sized, and together exactly the batch one process with ``batch_size × world_size`` rows
would see; and ``k`` consecutive yields hold the same rows as one yield ``k`` times larger,
so gradient accumulation and data parallelism see the same data.

The position in the stream, ``(epoch, offset)``, is all the state there is: `state_dict`
after a yield and `load_state_dict` in a new loader continue with exactly the next batch
(with any world size that keeps the global batch).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from lmforge.data.formats import Example
from lmforge.data.packing import (
    STRATEGIES,
    PackingReport,
    Row,
    Segment,
    fit_to_length,
    num_loss_tokens,
    pack,
    rows_to_batch,
    window_segments,
)
from lmforge.data.tokens import TokenFile


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator for epoch ``epoch``: independent streams per (seed, epoch) pair."""
    return np.random.default_rng([seed, epoch])


class RowStream:
    """The shared machinery: global batches from an endless, per-epoch shuffled row stream."""

    kind = ""

    def __init__(self, seq_len: int, batch_size: int, seed: int, rank: int, world_size: int):
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len} must be at least 2")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._epoch, self._offset = 0, 0

    # -- to implement ---------------------------------------------------------------------
    def _epoch_rows(self, epoch: int) -> Sequence[Row]:
        """Packed rows of ``epoch``, in the order the stream serves them."""
        raise NotImplementedError

    def _batch(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _fingerprint(self) -> dict[str, Any]:
        """Facts about the data a saved position must agree with."""
        raise NotImplementedError

    # -- the stream -----------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next row comes from."""
        return self._epoch

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def tokens_per_batch(self) -> int:
        """Tokens (real and filler) in one batch of this rank: ``batch_size × seq_len``."""
        return self.batch_size * self.seq_len

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            rows, self._epoch, self._offset = self._take(self.global_batch_size)
            mine = rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            batch = self._batch(mine)
            batch["num_loss_tokens"] = num_loss_tokens(batch["labels"])
            yield batch

    def _take(self, count: int) -> tuple[list[Row], int, int]:
        """The next ``count`` rows of the stream and the position after them."""
        rows: list[Row] = []
        epoch, offset = self._epoch, self._offset
        while len(rows) < count:
            epoch_rows = self._epoch_rows(epoch)
            if not epoch_rows:
                raise ValueError("the data packs into no rows")
            take = min(count - len(rows), len(epoch_rows) - offset)
            rows += epoch_rows[offset : offset + take]
            offset += take
            if offset == len(epoch_rows):
                epoch, offset = epoch + 1, 0
        return rows, epoch, offset

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: resuming from it yields exactly the next batch."""
        return {"kind": self.kind, "epoch": self._epoch, "offset": self._offset,
                "seed": self.seed, "seq_len": self.seq_len, **self._fingerprint()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict`; the data, seed and seq_len must be the same."""
        expected = {"kind": self.kind, "seed": self.seed, "seq_len": self.seq_len,
                    **self._fingerprint()}  # fmt: skip
        wrong = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if wrong:
            details = ", ".join(f"{k}: saved {s!r}, now {n!r}" for k, (s, n) in wrong.items())
            raise ValueError(
                f"cannot resume this {self.kind} loader from the saved position ({details})"
            )
        epoch, offset = int(state["epoch"]), int(state["offset"])
        if epoch < 0 or not 0 <= offset < max(1, len(self._epoch_rows(epoch))):
            raise ValueError(f"saved position epoch={epoch}, offset={offset} is out of range")
        self._epoch, self._offset = epoch, offset


class PretrainLoader(RowStream):
    """Rows of ``seq_len`` consecutive tokens of a `TokenFile` (greedy packing: documents
    continue into the next row), reshuffled each epoch; the last row of the file is
    completed with filler, so every token is used once per epoch."""

    kind = "pretrain"

    def __init__(
        self,
        token_dir: str | os.PathLike | TokenFile,
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = 0,
    ) -> None:
        super().__init__(seq_len, batch_size, seed, rank, world_size)
        self.data = token_dir if isinstance(token_dir, TokenFile) else TokenFile(token_dir)
        if self.data.num_tokens == 0:
            raise ValueError(f"{self.data.path}: the token file is empty")
        self.pad_id = pad_id
        self.rows_per_epoch = -(-self.data.num_tokens // seq_len)
        self.report = PackingReport(
            rows=self.rows_per_epoch,
            real_tokens=self.data.num_tokens,
            total_tokens=self.rows_per_epoch * seq_len,
        )
        self._order: tuple[int, np.ndarray] | None = None

    def _epoch_rows(self, epoch: int) -> Sequence[Row]:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_rng(self.seed, epoch).permutation(self.rows_per_epoch))
        return _LazyRows(self._order[1], self._row)

    def _row(self, j: int) -> Row:
        start = int(j) * self.seq_len
        return window_segments(self.data.doc_offsets, start, min(start + self.seq_len,
                                                                 self.data.num_tokens))  # fmt: skip

    def _batch(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        tokens, offsets = self.data.tokens, self.data.doc_offsets

        def tokens_of(doc: int, start: int, n: int) -> np.ndarray:
            at = int(offsets[doc]) + start
            return tokens[at : at + n]

        return rows_to_batch(rows, self.seq_len, tokens_of, pad_id=self.pad_id)

    def _fingerprint(self) -> dict[str, Any]:
        return {"num_tokens": self.data.num_tokens, "num_docs": self.data.num_docs}


class _LazyRows(Sequence):
    """Rows of an epoch in shuffled order, laid out only when sliced (an epoch of a large
    corpus has millions of rows; a batch needs a few)."""

    def __init__(self, order: np.ndarray, row: Any) -> None:
        self.order, self.row = order, row

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self.row(j) for j in self.order[index]]
        return self.row(self.order[index])


class SFTLoader(RowStream):
    """Examples packed into rows of ``seq_len`` (best-fit decreasing by default), repacked
    and reshuffled each epoch.

    Args:
        split_long: cut examples longer than ``seq_len`` into pieces (each piece attends
            only within itself). Off by default: a conversation is never split, and longer
            ones follow ``too_long`` — "error", "truncate" or "drop" (both counted in
            ``report``).
        strategy: "best_fit" (best-fit decreasing) or "greedy" (input order; next-fit
            without splitting, the cut stream with it).
    """

    kind = "sft"

    def __init__(
        self,
        examples: Sequence[Example],
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split_long: bool = False,
        strategy: str = "best_fit",
        too_long: str = "error",
        pad_id: int = 0,
    ) -> None:
        super().__init__(seq_len, batch_size, seed, rank, world_size)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if not examples:
            raise ValueError("no examples to load")
        self.examples, self.strategy, self.split_long = examples, strategy, split_long
        self.pad_id = pad_id
        self.report = PackingReport()
        lengths = [len(e) for e in examples]
        if split_long:
            self._kept, self._lengths = list(range(len(lengths))), lengths
        else:
            self._kept, self._lengths = fit_to_length(lengths, seq_len, too_long, self.report)
        if not self._kept:
            raise ValueError(f"every example is longer than seq_len={seq_len}")
        self._cache: dict[int, list[Row]] = {}
        first = self._epoch_rows(0)
        self.rows_per_epoch = len(first)  # exact for best_fit; epoch 0's for greedy
        self.report.rows = len(first)
        self.report.real_tokens = sum(self._lengths)
        self.report.total_tokens = len(first) * seq_len

    def _epoch_rows(self, epoch: int) -> list[Row]:
        if epoch not in self._cache:
            rng = epoch_rng(self.seed, epoch)
            order = rng.permutation(len(self._kept))
            lengths = [self._lengths[i] for i in order]
            packed = pack(lengths, self.seq_len, strategy=self.strategy, split=self.split_long)
            rows = [[Segment(self._kept[order[s.index]], s.start, s.length) for s in row]
                    for row in packed]  # fmt: skip
            self._cache = {epoch: [rows[i] for i in rng.permutation(len(rows))]}
        return self._cache[epoch]

    def _batch(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        examples = self.examples

        def tokens_of(i: int, start: int, n: int) -> list[int]:
            return examples[i].input_ids[start : start + n]

        def labels_of(i: int, start: int, n: int) -> list[int]:
            return examples[i].labels[start : start + n]

        return rows_to_batch(rows, self.seq_len, tokens_of, labels_of, self.pad_id)

    def _fingerprint(self) -> dict[str, Any]:
        return {"num_examples": len(self.examples), "num_tokens": sum(self._lengths)}
