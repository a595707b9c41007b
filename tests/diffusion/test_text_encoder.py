"""Caption tokenizer (left padding, the empty caption, unknown words) and the text encoder
(an lmforge LM body): left padding does not change the states of real tokens."""

from __future__ import annotations

import pytest
import torch

from lmforge.diffusion.text_encoder import CaptionTokenizer, TextEncoder, TextEncoderConfig


def test_tokenizer_left_pads_and_round_trips():
    tok = CaptionTokenizer.from_captions(["a big red circle", "a square"])
    assert tok.vocab[:3] == ["<pad>", "<bos>", "<unk>"] and tok.max_length == 5
    ids, mask = tok.encode(["a square", "", "a big red circle"])
    assert ids.shape == (3, 5)
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
    assert ids[1].tolist() == [0, 0, 0, 0, 1]  # the empty caption: <bos> alone
    assert [tok.vocab[i] for i in ids[2].tolist()] == ["<bos>", "a", "big", "red", "circle"]
    assert tok.unknown_words("a blue square") == ["blue"]
    assert CaptionTokenizer.from_dict(tok.to_dict()).vocab == tok.vocab
    with pytest.raises(ValueError, match="at most 4"):
        tok.encode(["a b c d e"])


def test_padding_does_not_change_real_token_states():
    tok = CaptionTokenizer.from_captions(["a big red circle at the top", "a square"])
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, hidden_size=16,
                                        num_attention_heads=2, intermediate_size=32,
                                        max_length=tok.max_length)).eval()  # fmt: skip
    ids, mask = tok.encode(["a square", "a big red circle at the top"])
    states = enc(ids, mask)
    assert states.shape == (2, tok.max_length, 16)
    alone = torch.tensor([tok.ids("a square")])
    solo = enc(alone, torch.ones_like(alone))
    torch.testing.assert_close(states[0, -3:], solo[0], rtol=1e-5, atol=1e-5)
