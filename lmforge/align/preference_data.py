"""Preference data → batches of (chosen, rejected) pairs for DPO-family losses and reward models.

    >>> pairs, report = load_preference_pairs(["prefs.jsonl"], tokenizer, max_len=512)
    >>> loader = PreferenceLoader(pairs, batch_size=8, seq_len=512, rank=r, world_size=w)
    >>> batch = next(iter(loader))     # 8 pairs = 16 sequences, packed into rows

**Tokenization.** A `PreferenceRecord` (``lmforge.data.sources``) becomes two SFT-style
`Example`s sharing the prompt, with labels on the completion only:

- messages (``prompt`` a message list or a string, read as one user turn; ``chosen`` /
  ``rejected`` message lists or strings, read as one assistant turn) render through the chat
  template, and the targets are the completion's assistant turns, found by the token prefix
  property exactly as SFT finds them (`lmforge.data.formats.tokenize_conversation`);
- plain strings everywhere render the same way (a user turn, an assistant turn), as SFT renders
  prompt/completion records; with ``format="raw"`` (``data.format=raw``) or a tokenizer without
  a chat template they become ``<bos> prompt completion <eos>`` (loss on completion + eos);
- records without a prompt (``chosen`` / ``rejected`` full conversations, the implicit-prompt
  format) train on the turns after the longest common leading run of messages.

**Batches.** ``batch_size`` is *pairs* per micro-batch. Sequence ``2i`` of a batch is pair
i's chosen completion and ``2i + 1`` its rejected one. With ``layout="packed"`` (default) the
``2·batch_size`` sequences are packed best-fit into rows as wide as the batch's longest
sequence (trimmed to the fullest row) with ``position_ids`` / ``document_ids`` keeping them
apart, so almost no padding is computed (Principle 5) — rows no wider than the longest
sequence keep the block-diagonal attention, whose cost grows with the row width squared,
small; ``layout="padded"`` gives one right-padded sequence per row (with
``attention_mask``, which a reward model reads to find each sequence's last token). Either way
``sequence_ids`` ``[R, T]`` says which sequence each token belongs to (-1 for filler), and
``pair_ids`` ``[B]`` which pairs of the data set the batch holds.

**Order and resume** follow `lmforge.data.loader`: an endless stream of pairs, reshuffled per
epoch from ``(seed, epoch)``; every yield takes the next global batch of ``batch_size ×
world_size`` pairs and rank r keeps its slice; ``k`` yields hold the same pairs as one yield
``k`` times larger (so gradient accumulation and data parallelism see the same data); the
position ``(epoch, offset)`` is the whole state.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.formats import (
    Example,
    PrefixPropertyError,
    tokenize_conversation,
    tokenize_prompt_completion,
)
from lmforge.data.loader import RowStream, epoch_rng
from lmforge.data.packing import pack_best_fit, rows_to_batch
from lmforge.data.sources import DataError, DataReport, PreferenceRecord, read_records
from lmforge.models.loss import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer, TokenizerError

__all__ = [
    "LAYOUTS",
    "PreferenceLoader",
    "PreferencePair",
    "load_preference_pairs",
    "pack_sequences",
    "pad_sequences",
    "synthetic_preferences",
    "tokenize_preference",
    "write_preference_jsonl",
]

LAYOUTS = ("packed", "padded")


@dataclass
class PreferencePair:
    """One preference pair as two token sequences sharing the prompt (labels: completion only)."""

    chosen: Example
    rejected: Example
    where: str = ""

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


# ----------------------------------------------------------------------------- tokenization


def _as_messages(turns: str | tuple, role: str) -> list[dict[str, Any]]:
    return [{"role": role, "content": turns}] if isinstance(turns, str) else list(turns)


def _common_prefix(a: Sequence[dict], b: Sequence[dict]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def tokenize_preference(
    record: PreferenceRecord, tokenizer: Tokenizer, raw: bool = False
) -> PreferencePair:
    """The `PreferencePair` of a validated record (see the module docstring); plain-string
    records are raw text only with ``raw`` or when the tokenizer has no chat template."""
    prompt, chosen, rejected = record.prompt, record.chosen, record.rejected
    strings = all(isinstance(x, str) for x in (prompt, chosen, rejected))
    if strings and (raw or tokenizer.chat_template is None):
        pair = PreferencePair(
            tokenize_prompt_completion(prompt, chosen, tokenizer),
            tokenize_prompt_completion(prompt, rejected, tokenizer),
        )
    else:
        if prompt is None:  # implicit prompt: the shared leading messages
            c, r = list(chosen), list(rejected)
            shared = _common_prefix(c, r)
            if shared == min(len(c), len(r)):
                raise DataError("'chosen' and 'rejected' have no differing turns after the prompt")
            prompt_msgs, c, r = c[:shared], c[shared:], r[shared:]
        else:
            prompt_msgs = _as_messages(prompt, "user")
            c, r = _as_messages(chosen, "assistant"), _as_messages(rejected, "assistant")
        if not prompt_msgs:
            raise DataError("no prompt: 'chosen' and 'rejected' differ from their first message")
        pair = PreferencePair(_completion(prompt_msgs, c, tokenizer),
                              _completion(prompt_msgs, r, tokenizer))  # fmt: skip
    pair.where = pair.chosen.where = pair.rejected.where = record.where
    return pair


def _completion(prompt: list[dict], completion: list[dict], tokenizer: Tokenizer) -> Example:
    """``prompt + completion`` through the chat template, targets on the completion's
    assistant turns. A single assistant reply (the usual case) needs only the prompt's and
    the whole conversation's renderings: its targets are everything after the prompt."""
    messages = [*prompt, *completion]
    if len(completion) != 1 or completion[0]["role"] != "assistant":
        return tokenize_conversation(messages, tokenizer, train_from=len(prompt))
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    if ids[: len(head)] != head:
        raise PrefixPropertyError(
            "the chat template breaks the token prefix property (the prompt's rendering is not "
            "a prefix of the conversation's), so the completion's tokens cannot be found"
        )
    labels = [IGNORE_INDEX] * len(head) + ids[len(head) :]
    labels[0] = IGNORE_INDEX
    return Example(ids, labels)


def _fit(example: Example, max_len: int) -> Example | None:
    """``example`` cut to ``max_len`` tokens; None when no target is left."""
    cut = Example(example.input_ids[:max_len], example.labels[:max_len], example.where)
    return cut if cut.num_loss_tokens else None


def load_preference_pairs(
    paths: Sequence[str | Path],
    tokenizer: Tokenizer,
    *,
    skip_bad: bool = False,
    max_len: int | None = None,
    too_long: str = "truncate",
    format: str = "auto",  # noqa: A002 (data.format, as SFT reads it)
) -> tuple[list[PreferencePair], DataReport]:
    """Read, validate and tokenize preference data (JSONL / Parquet / HF dataset folders with
    ``prompt`` / ``chosen`` / ``rejected``, or ``chosen`` / ``rejected`` conversations).

    Args:
        skip_bad: skip (and count) malformed records instead of raising `DataError` naming
            file, line and field.
        format: ``data.format``: "raw" keeps plain-string records as ``<bos> prompt completion
            <eos>``; otherwise (default) they are a user turn and an assistant turn through the
            chat template, as SFT renders them, so DPO trains what SFT trained and the server
            serves.
        max_len: the longest sequence kept whole; a pair with a longer side follows
            ``too_long``: "truncate" (both sides cut to ``max_len``; counted), "drop"
            (counted) or "error". A side left with no completion token drops the pair.
    """
    if too_long not in ("truncate", "drop", "error"):
        raise ValueError(f"too_long={too_long!r}: choose 'truncate', 'drop' or 'error'")
    report = DataReport()
    pairs: list[PreferencePair] = []
    for record in read_records(paths, schema="preference", skip_bad=skip_bad, report=report):
        try:
            pair = tokenize_preference(record, tokenizer, raw=format == "raw")
            for side, ex in (("chosen", pair.chosen), ("rejected", pair.rejected)):
                if ex.num_loss_tokens == 0:
                    raise DataError(f"'{side}' has no completion tokens to score")
        except (DataError, TokenizerError) as exc:
            if not skip_bad:
                raise DataError(f"{record.where}: {exc}") from None
            report.kept -= 1
            reason = "template breaks prefix" if isinstance(exc, PrefixPropertyError) else None
            report.skip(reason or "cannot format", f"{record.where}: {exc}")
            continue
        longest = max(len(pair.chosen), len(pair.rejected))
        if max_len is not None and longest > max_len:
            if too_long == "error":
                raise DataError(f"{record.where}: {longest} tokens > max_len={max_len}")
            chosen, rejected = _fit(pair.chosen, max_len), _fit(pair.rejected, max_len)
            if too_long == "drop" or chosen is None or rejected is None:
                report.kept -= 1
                report.count(
                    "dropped: longer than max_len"
                    if too_long == "drop"
                    else "dropped: no completion tokens left after truncation"
                )
                continue
            pair = PreferencePair(chosen, rejected, pair.where)
            report.count("truncated to max_len")
        pairs.append(pair)
    return pairs, report


# ----------------------------------------------------------------------------- batches


class PreferenceLoader(RowStream):
    """Endless, deterministic, shardable, exactly resumable batches of preference pairs.

    Args:
        pairs: tokenized pairs (each sequence at most ``seq_len`` tokens).
        batch_size: pairs per micro-batch per rank.
        seq_len: the longest row (packed) and the longest sequence.
        layout: "packed" (default; no padding) or "padded" (one sequence per row).
        reference_logps: optional ``[len(pairs), 2]`` precomputed reference log-probs
            (chosen, rejected); batches then carry ``ref_logps`` ``[2B]`` in sequence order.
    """

    kind = "preference"

    def __init__(
        self,
        pairs: Sequence[PreferencePair],
        batch_size: int,
        seq_len: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        layout: str = "packed",
        pad_id: int = 0,
        reference_logps: torch.Tensor | None = None,
    ) -> None:
        super().__init__(seq_len, batch_size, seed, rank, world_size)
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
        if not pairs:
            raise ValueError("no preference pairs to load")
        for i, pair in enumerate(pairs):
            if max(len(pair.chosen), len(pair.rejected)) > seq_len:
                raise ValueError(f"pair {i} ({pair.where}) is longer than seq_len={seq_len}")
        self.pairs, self.layout, self.pad_id = pairs, layout, pad_id
        self.reference_logps = reference_logps
        self._order: tuple[int, list[int]] | None = None

    def _epoch_rows(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_rng(self.seed, epoch).permutation(len(self.pairs)).tolist())
        return self._order[1]

    def _fingerprint(self) -> dict[str, Any]:
        return {"num_pairs": len(self.pairs), "num_tokens": sum(len(p) for p in self.pairs)}

    def _batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        return self.collate(rows)

    def collate(self, pair_ids: Sequence[int]) -> dict[str, torch.Tensor]:
        """The batch of pairs ``pair_ids`` (any subset; see the module docstring)."""
        seqs = [ex for i in pair_ids for ex in (self.pairs[i].chosen, self.pairs[i].rejected)]
        if self.layout == "packed":
            batch = pack_sequences(seqs, self.seq_len, self.pad_id)
        else:
            batch = pad_sequences(seqs, self.pad_id)
        batch["pair_ids"] = torch.tensor(list(pair_ids), dtype=torch.long)
        if self.reference_logps is not None:
            batch["ref_logps"] = self.reference_logps[batch["pair_ids"]].reshape(-1)
        return batch


def pack_sequences(seqs: Sequence[Example], seq_len: int, pad_id: int = 0) -> dict:
    """``seqs`` packed best-fit into rows as wide as the longest of them (≤ ``seq_len``),
    trimmed to the fullest row: ``input_ids``, ``labels``, ``position_ids``,
    ``document_ids``, ``sequence_ids``."""
    lengths = [len(s) for s in seqs]
    if max(lengths) > seq_len:
        raise ValueError(f"a sequence of {max(lengths)} tokens is longer than seq_len={seq_len}")
    rows = pack_best_fit(lengths, max(lengths))
    width = max(sum(seg.length for seg in row) for row in rows)
    batch = rows_to_batch(
        rows,
        width,
        lambda i, start, n: seqs[i].input_ids[start : start + n],
        lambda i, start, n: seqs[i].labels[start : start + n],
        pad_id,
    )
    sequence_ids = np.full((len(rows), width), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for seg in row:
            sequence_ids[r, at : at + seg.length] = seg.index
            at += seg.length
    batch["sequence_ids"] = torch.from_numpy(sequence_ids)
    return batch


def pad_sequences(seqs: Sequence[Example], pad_id: int = 0) -> dict:
    """One right-padded sequence per row: ``input_ids``, ``labels``, ``attention_mask``,
    ``sequence_ids`` (``[2B, max length]``)."""
    width = max(len(s) for s in seqs)
    shape = (len(seqs), width)
    ids = np.full(shape, pad_id, dtype=np.int64)
    labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
    sequence_ids = np.full(shape, -1, dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s.input_ids
        labels[r, : len(s)] = s.labels
        sequence_ids[r, : len(s)] = r
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy((sequence_ids >= 0).astype(np.int64)),
        "sequence_ids": torch.from_numpy(sequence_ids),
    }


# ----------------------------------------------------------------------------- synthetic data

_SYNTHETIC_KINDS = ("sum", "animal", "next_day", "count", "where")


def _wrong_answer(answer: str, rng: random.Random) -> str | None:
    """``answer`` with its last number, animal sound, day or place replaced by a wrong one."""
    from lmforge.data.tasks.corpus import ANIMAL_SOUNDS, DAYS, PLACES

    numbers = list(re.finditer(r"\d+", answer))
    if numbers:
        m = numbers[-1]
        n = int(m.group())
        wrong = n + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if n + d >= 0])
        return answer[: m.start()] + str(wrong) + answer[m.end() :]
    for choices in (sorted(set(ANIMAL_SOUNDS.values())), DAYS, PLACES):
        found = [w for w in choices if re.search(rf"\b{re.escape(w)}\b", answer)]
        if found:
            last = max(found, key=lambda w: answer.rfind(w))
            other = rng.choice([w for w in choices if w != last])
            at = answer.rfind(last)
            return answer[:at] + other + answer[at + len(last) :]
    return None


def synthetic_preferences(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` preference records ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` in
    the conversational format, identical for identical ``(n, seed)``.

    The questions are those of `lmforge.data.tasks.chat` (sums, animal sounds, days, counting,
    places; some with a system message); ``chosen`` is the correct answer and ``rejected`` the
    same sentence with its last number, sound, day or place made wrong — a preference a small
    model can learn (and the reward of a DPO policy can separate) in a few steps.
    """
    from lmforge.data.tasks.chat import CHAT_KINDS, SYSTEM_PROMPTS

    if n < 0:
        raise ValueError(f"n={n} must be ≥ 0")
    rng = random.Random(seed)
    records = []
    while len(records) < n:
        question, answer = CHAT_KINDS[rng.choice(_SYNTHETIC_KINDS)][0](rng)
        wrong = _wrong_answer(answer, rng)
        if wrong is None or wrong == answer:
            continue
        prompt = [{"role": "user", "content": question}]
        if rng.random() < 0.2:
            prompt.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        records.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": answer}],
            "rejected": [{"role": "assistant", "content": wrong}],
        })  # fmt: skip
    return records


def write_preference_jsonl(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write `synthetic_preferences` as JSONL (atomically; unchanged content is not rewritten)."""
    from lmforge.io import atomic_write_text

    path = Path(path)
    text = "".join(json.dumps(r) + "\n" for r in synthetic_preferences(n, seed))
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path
