"""The text side of latent text-to-image: a word-level caption tokenizer and a text encoder
that is an lmforge language-model body (`lmforge.models.transformer.TransformerModel`).

    tok = CaptionTokenizer.from_captions(train.captions)
    ids, mask = tok.encode(["a large blue circle at the bottom right"])   # left-padded
    ctx = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size)).forward(ids, mask)  # [B, L, H]

Every caption is ``<bos> w₁ … w_n`` left-padded with ``<pad>`` to ``max_length`` (the body's
attention mask is 1 for real tokens, 0 for left padding). The null caption of classifier-free
guidance is the empty caption, ``<bos>`` alone (Stable Diffusion conditions its unconditional
branch on the empty prompt's encoding the same way). The body is causal — as CLIP's text
transformer is — and the denoiser cross-attends to all of its (non-pad) hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmforge.config import ConfigError, ModelConfig
from lmforge.models.transformer import TransformerModel

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"

__all__ = ["CaptionTokenizer", "TextEncoder", "TextEncoderConfig"]


class CaptionTokenizer:
    """Whitespace words → ids over a fixed vocabulary (``<pad>`` 0, ``<bos>`` 1, ``<unk>`` 2)."""

    def __init__(self, words: list[str], max_length: int = 12) -> None:
        self.vocab = [PAD, BOS, UNK, *[w for w in words if w not in (PAD, BOS, UNK)]]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length

    @classmethod
    def from_captions(cls, captions: list[str], max_length: int | None = None) -> CaptionTokenizer:
        words = sorted({w for c in captions for w in c.lower().split()})
        longest = max((len(c.split()) for c in captions), default=0) + 1
        return cls(words, max_length or longest)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def ids(self, caption: str) -> list[int]:
        """``<bos>`` and the caption's word ids (unknown words → ``<unk>``)."""
        words = caption.lower().split()
        if len(words) + 1 > self.max_length:
            raise ValueError(
                f"caption {caption!r}: {len(words)} words, the tokenizer takes at most "
                f"{self.max_length - 1}"
            )
        return [self.index[BOS], *(self.index.get(w, self.index[UNK]) for w in words)]

    def unknown_words(self, caption: str) -> list[str]:
        return [w for w in caption.lower().split() if w not in self.index]

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` [N, max_length], left-padded."""
        n, length = len(captions), self.max_length
        ids = torch.zeros(n, length, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.long)
        for i, caption in enumerate(captions):
            row = self.ids(caption)
            ids[i, length - len(row) :] = torch.tensor(row)
            mask[i, length - len(row) :] = 1
        return ids, mask

    def to_dict(self) -> dict:
        return {"vocab": self.vocab, "max_length": self.max_length}

    @classmethod
    def from_dict(cls, raw: dict) -> CaptionTokenizer:
        if raw.get("vocab", [])[:3] != [PAD, BOS, UNK]:
            raise ConfigError("caption tokenizer: vocab must start with <pad>, <bos>, <unk>")
        return cls(raw["vocab"][3:], int(raw["max_length"]))


@dataclass
class TextEncoderConfig:
    vocab_size: int = 64
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    max_length: int = 12

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            max_position_embeddings=max(self.max_length, 16),
            pad_token_id=0,
            bos_token_id=1,
        )


class TextEncoder(nn.Module):
    """``forward(input_ids, attention_mask) → [B, L, H]``: the LM body's final hidden states."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.body = TransformerModel(config.model_config())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.body(input_ids=input_ids, attention_mask=attention_mask)
