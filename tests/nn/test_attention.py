"""Attention masks, and the flash-attn varlen wrapper checked against the SDPA mask path.

No GPU here, so the varlen kernel is replaced by a reference that implements its documented
contract (packed ``[total, heads, dim]`` tensors, ``cu_seqlens``, causal, ``window_size=(left,
right)``); the test checks lmforge's reshaping and window arguments around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import lmforge
from lmforge.nn import attention
from lmforge.nn.attention import attention_mask


def test_mask_semantics():
    q = torch.arange(4)
    k = torch.arange(4)
    docs = torch.tensor([[0, 0, 1, 1]])
    m = attention_mask(q, k, doc_ids=docs, window=None)[0, 0]
    expected = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(m, expected)
    w = attention_mask(q, k, window=2)[0, 0]
    assert w[3].tolist() == [False, False, True, True]
    # A padding query row is never all-masked (it may see itself).
    pad = attention_mask(q, k, key_valid=torch.tensor([[0, 0, 1, 1]]))[0, 0]
    assert pad[0].tolist() == [True, False, False, False]


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=True, window_size=(-1, -1)):
    assert q.ndim == 3 and causal and torch.equal(cu_q, cu_k)
    groups = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        i = torch.arange(e - s)
        allowed = i[None, :] <= i[:, None]
        if window_size[0] >= 0:
            allowed &= i[:, None] - i[None, :] <= window_size[0]
        out[s:e] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed).transpose(0, 1)
    return out


def test_varlen_wrapper_matches_mask_path(monkeypatch, hf_model_factory, tmp_path):
    hf = hf_model_factory("mistral", sliding_window=3, num_key_value_heads=1)
    hf.save_pretrained(tmp_path)
    model = lmforge.load_model(tmp_path).eval()
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    cu = torch.tensor([0, 3, 8, 12, 16], dtype=torch.int32)
    with torch.no_grad():
        expected = model(ids, cu_seqlens=cu).logits
        monkeypatch.setattr(attention, "flash_attn_varlen_func", _reference_varlen)
        monkeypatch.setattr(attention.AttentionBatch, "use_flash", lambda self, x: True)
        got = model(ids, cu_seqlens=cu).logits
    assert torch.allclose(got, expected, atol=1e-5)
