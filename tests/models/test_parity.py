"""Numerical parity with `transformers` for every family and architecture option.

Each case: random HF model → save_pretrained → lmforge.load_model → equal logits (padded
batch); lmforge → save_model → HF from_pretrained → equal again; a packed batch equals each
document run alone; incremental decoding with the KV cache equals one full forward.
"""

from __future__ import annotations

import zlib

import pytest
import torch

import lmforge
from lmforge import KVCache

ATOL = 1e-4

CASES = {
    "llama-mha": ("llama", dict(num_key_value_heads=4)),
    "llama-gqa-headdim-bias": (
        "llama",
        dict(head_dim=16, attention_bias=True, mlp_bias=True),
    ),
    "llama-mqa-linear-rope": (
        "llama",
        dict(num_key_value_heads=1, rope_parameters={"rope_type": "linear", "factor": 2.0}),
    ),
    "llama-llama3-rope-tied": (
        "llama",
        dict(
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "llama-yarn": (
        "llama",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            }
        ),
    ),
    "qwen2-bias-tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2-sliding": (
        "qwen2",
        dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    ),
    "qwen3-qknorm-headdim": ("qwen3", dict(head_dim=16)),
    "qwen3-bias-sliding-yarn": (
        "qwen3",
        dict(
            attention_bias=True,
            use_sliding_window=True,
            sliding_window=3,
            max_window_layers=0,
            rope_parameters={"rope_type": "yarn", "factor": 2.0, "beta_fast": 16.0},
        ),
    ),
    "mistral-sliding": ("mistral", dict(sliding_window=5)),
    "mistral-full-mqa": ("mistral", dict(sliding_window=None, num_key_value_heads=1)),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def pair(request, tmp_path_factory, hf_model_factory):
    """(hf_model, lmforge_model, folder) for one case."""
    model_type, overrides = CASES[request.param]
    hf = hf_model_factory(model_type, seed=zlib.crc32(request.param.encode()) % 1000, **overrides)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, lmforge.load_model(folder).eval(), folder


def _batch(vocab: int = 97, b: int = 3, t: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, :1] = 0
    return ids, mask


def _max_diff(a, b, mask=None):
    d = (a - b).abs()
    if mask is not None:
        d = d * mask[..., None]
    return d.max().item()


@torch.no_grad()
def test_hf_to_lmforge_logits(pair):
    hf, ours, _ = pair
    ids, mask = _batch()
    assert _max_diff(hf(ids).logits, ours(ids).logits) <= ATOL
    ref = hf(ids, attention_mask=mask).logits
    got = ours(ids, attention_mask=mask).logits
    assert ref.abs().max() > 1.0  # the comparison is not between near-zero logits
    assert _max_diff(ref, got, mask) <= ATOL


@torch.no_grad()
def test_inputs_embeds_and_hidden_states_match_hf(pair):
    """The body takes embeddings instead of ids (VLMs, prompt tuning) and returns the final
    hidden states: both as HF's ``inputs_embeds`` / ``last_hidden_state``."""
    hf, ours, _ = pair
    ids, mask = _batch(seed=2)
    embeds = torch.randn(
        *ids.shape, hf.config.hidden_size, generator=torch.Generator().manual_seed(3)
    )
    ref = hf(inputs_embeds=embeds, attention_mask=mask).logits
    assert _max_diff(ref, ours(inputs_embeds=embeds, attention_mask=mask).logits, mask) <= ATOL
    hidden = hf.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert _max_diff(hidden, ours.model(ids, attention_mask=mask), mask) <= ATOL


@torch.no_grad()
def test_lmforge_to_hf_logits(pair, tmp_path):
    from transformers import AutoModelForCausalLM

    _, ours, _ = pair
    lmforge.save_model(ours, tmp_path)
    hf2 = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    ids, mask = _batch(seed=1)
    assert (
        _max_diff(hf2(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits, mask)
        <= ATOL
    )


@torch.no_grad()
def test_packed_equals_separate(pair):
    _, ours, _ = pair
    lengths = [5, 7, 4]
    docs = [
        torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(n)) for n in lengths
    ]
    packed = torch.cat(docs, dim=1)
    doc_ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)
    out = ours(packed, document_ids=doc_ids).logits
    cu = torch.tensor([0, 5, 12, 16], dtype=torch.int32)
    out_cu = ours(packed, cu_seqlens=cu).logits
    start = 0
    for doc, n in zip(docs, lengths):
        alone = ours(doc).logits
        assert _max_diff(out[:, start : start + n], alone) <= ATOL
        assert _max_diff(out_cu[:, start : start + n], alone) <= ATOL
        start += n


@torch.no_grad()
def test_packed_rows_with_cu_seqlens(pair):
    """Two rows of 8 tokens: [3, 5] and [8]; cu_seqlens over the flattened batch."""
    _, ours, _ = pair
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(3))
    cu = torch.tensor([0, 3, 8, 16], dtype=torch.int32)
    out = ours(ids, cu_seqlens=cu).logits
    assert _max_diff(out[0:1, :3], ours(ids[0:1, :3]).logits) <= ATOL
    assert _max_diff(out[0:1, 3:], ours(ids[0:1, 3:]).logits) <= ATOL
    assert _max_diff(out[1:2], ours(ids[1:2]).logits) <= ATOL


@torch.no_grad()
def test_kv_cache_incremental_equals_full(pair):
    _, ours, _ = pair
    ids, mask = _batch(t=14, seed=2)
    full = ours(ids, attention_mask=mask).logits
    cache = KVCache.for_model(ours, batch_size=ids.shape[0], max_len=ids.shape[1])
    pieces, pos = [], 0
    for step in (6, 1, 3, 1, 1, 1, 1):  # prefill, single tokens and a chunk with a cache offset
        chunk = ids[:, pos : pos + step]
        pieces.append(ours(chunk, attention_mask=mask[:, : pos + step], cache=cache).logits)
        pos += step
    assert pos == ids.shape[1] and cache.length == pos
    assert _max_diff(torch.cat(pieces, dim=1), full, mask) <= ATOL
    # Without padding, too.
    cache = KVCache.for_model(ours, batch_size=ids.shape[0], max_len=ids.shape[1])
    first = ours(ids[:, :9], cache=cache).logits
    rest = [ours(ids[:, i : i + 1], cache=cache).logits for i in range(9, 14)]
    assert _max_diff(torch.cat([first, *rest], dim=1), ours(ids).logits) <= ATOL
