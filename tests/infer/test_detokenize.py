"""`lmforge.infer.detokenize` on its own: incremental text equals a full decode at every
step (partial UTF-8 characters and rewriting decoders included), stop-string search, the
token cut before a stop string, and what may be streamed."""

from __future__ import annotations

import pytest

from lmforge.infer.detokenize import (
    IncrementalDetokenizer,
    find_stop_string,
    streamable_end,
    tokens_before,
)


class ByteTokenizer:
    """Token ids are bytes: 1, 2, 3 are the three bytes of '€', others letters."""

    special = {1: 0xE2, 2: 0x82, 3: 0xAC}

    def __init__(self) -> None:
        self.decoded = 0

    def decode(self, ids, skip_special_tokens=False) -> str:
        self.decoded += len(ids)
        data = bytes(self.special.get(i, 97 + i % 26) for i in ids)
        return data.decode("utf-8", errors="replace")


class CapitalisingTokenizer:
    """Rewrites earlier text: the first letter is upper-case only once there are two tokens."""

    def decode(self, ids, skip_special_tokens=False) -> str:
        text = "".join(chr(97 + i % 26) for i in ids)
        return text[:1].upper() + text[1:] if len(ids) >= 2 else text


@pytest.mark.parametrize("tokenizer", [ByteTokenizer, CapitalisingTokenizer])
def test_incremental_text_equals_full_decode_at_every_step(tokenizer):
    tok = tokenizer()
    ids = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 6, 7, 1, 2, 3] * 3
    detok = IncrementalDetokenizer(tok)
    for n in range(1, len(ids) + 1):
        assert detok.update(ids[:n]) == tokenizer().decode(ids[:n])


def test_incremental_decoding_decodes_a_window_not_the_whole_output():
    tok = ByteTokenizer()
    ids = [1, 2, 3, 4] * 30
    detok = IncrementalDetokenizer(tok)
    for n in range(1, len(ids) + 1):
        detok.update(ids[:n])
    assert tok.decoded < 10 * len(ids)  # a full decode per token: ~n²/2 = 7260
    assert detok.read_offset == len(ids)


def test_find_stop_string_finds_the_earliest_and_searches_only_new_text():
    assert find_stop_string("abcXYdefXY", ("def", "XY"), sent=0) == (3, "XY")
    assert find_stop_string("abcdef", ("zz",), sent=0) is None
    # Text before `sent` minus the longest stop was searched already.
    assert find_stop_string("XYabcdefgh", ("XY", "q"), sent=8) is None
    assert find_stop_string("abcdefXY", ("XY", "q"), sent=7) == (6, "XY")


def test_tokens_before_a_cut():
    tok = CapitalisingTokenizer()  # one character per token
    assert tokens_before([0, 1, 2, 3, 4], 3, tok.decode) == 3
    assert tokens_before([0, 1, 2], 0, tok.decode) == 0
    pairs = lambda ids, skip_special_tokens=True: "ab" * len(ids)  # noqa: E731 - 2 chars/token
    assert tokens_before([7, 7, 7, 7], 5, pairs) == 2  # the 3rd token straddles the cut


@pytest.mark.parametrize(
    ("text", "stops", "sent", "finished", "end"),
    [
        ("hello", (), 0, False, 5),
        ("hello\ufffd", (), 0, False, 5),  # a partial character waits
        ("hello###", ("####",), 0, False, 5),  # may grow into a stop string
        ("hello#", ("#!", "##x"), 2, False, 5),
        ("hel\ufffd", (), 4, False, 4),  # never less than what was already sent
        ("hello##", ("###",), 0, True, 7),  # finished: everything
    ],
)
def test_streamable_end(text, stops, sent, finished, end):
    assert streamable_end(text, stops, sent, finished) == end
