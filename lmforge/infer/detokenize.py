"""Incremental detokenization and stop strings: the text side of a streamed request.

Decoding a request's whole output after every token costs O(n²); `IncrementalDetokenizer`
decodes a small window instead (as vLLM / TGI do): the text of ``ids[:read_offset]`` is final
("settled"), and each update decodes from ``prefix_offset`` (a few tokens back, for context):

    new text = decode(ids[prefix:]) − decode(ids[prefix:read])

settled once it does not end in a partial UTF-8 character (U+FFFD). A decoder that rewrites
earlier text (the window no longer extends the previous decode) is handled by decoding from
scratch, so the text always equals ``decode(ids)``.

Stop strings end a request at their first occurrence; `find_stop_string` searches only where a
new match can be, `tokens_before` says how many tokens' text precedes the cut, and
`streamable_end` holds back what may still change: a trailing partial character or a suffix
that may grow into a stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

REPLACEMENT = "\ufffd"  # what a decoder writes for a partial UTF-8 character


class IncrementalDetokenizer:
    """The text of a growing list of token ids, decoded a window at a time (module
    docstring). ``tokenizer.decode(ids, skip_special_tokens=True)`` does the decoding."""

    def __init__(self, tokenizer: Any) -> None:
        self.decode: Callable[..., str] = tokenizer.decode
        self.settled = ""  # text of ids[:read_offset]; final
        self.prefix_offset = 0  # decoding restarts here, a few tokens back, for context
        self.read_offset = 0

    def update(self, ids: Sequence[int]) -> str:
        """The text of all of ``ids`` (the previous ``ids`` plus new tokens at the end)."""
        before = self.decode(ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        after = self.decode(ids[self.prefix_offset :], skip_special_tokens=True)
        if not after.startswith(before):  # a decoder that rewrites earlier text: from scratch
            self.settled, self.prefix_offset, self.read_offset = "", 0, 0
            return self.decode(ids, skip_special_tokens=True)
        new = after[len(before) :]
        text = self.settled + new
        if new and not new.endswith(REPLACEMENT):
            self.settled = text
            self.prefix_offset, self.read_offset = self.read_offset, len(ids)
        return text


def find_stop_string(text: str, stops: Sequence[str], sent: int) -> tuple[int, str] | None:
    """``(index, stop)`` of the earliest stop string in ``text``, or None. Only text from
    ``sent`` (already streamed, so checked before) minus the longest stop's length is
    searched: an earlier match would have been found then."""
    longest = max(len(s) for s in stops)
    search_from = max(0, sent - longest)
    found = [(text.find(s, search_from), s) for s in stops]
    found = [(i, s) for i, s in found if i >= 0]
    return min(found) if found else None


def tokens_before(ids: Sequence[int], cut: int, decode: Callable[..., str]) -> int:
    """The most leading tokens of ``ids`` whose text fits in ``cut`` characters."""
    keep = len(ids)
    while keep > 0 and len(decode(ids[:keep], skip_special_tokens=True)) > cut:
        keep -= 1
    return keep


def streamable_end(text: str, stops: Sequence[str], sent: int, finished: bool) -> int:
    """How much of ``text`` can be streamed: all of it once ``finished``; otherwise not a
    trailing partial UTF-8 character (decoded as U+FFFD) nor a suffix that may still grow
    into a stop string — and never less than the ``sent`` characters already streamed."""
    if finished:
        return len(text)
    end = len(text)
    while end > 0 and text[end - 1] == REPLACEMENT:
        end -= 1
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, end), hold, -1):
            if text[end - k : end] == stop[:k]:
                hold = k
                break
    return max(end - hold, sent)
