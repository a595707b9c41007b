"""The PyTorch FlashAttention reference against SDPA: values, log-sum-exp and gradients for
causal / full, padding, sliding windows, GQA, a prefill after a cache (Tq < Tk), packed
varlen sequences, odd block sizes and bf16; and, on a CUDA GPU with flash-attn installed,
against flash-attn's own varlen kernel (skipped elsewhere)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.nn.flash_attention import flash_attention, flash_attention_varlen


def _qkv(b, h, hkv, tq, tk, d, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype)  # noqa: E731
    return make(b, h, tq, d), make(b, hkv, tk, d), make(b, hkv, tk, d)


def _sdpa(q, k, v, causal=True, key_valid=None, window=None):
    """SDPA with an explicit boolean mask built independently (bottom-right causal)."""
    tq, tk = q.shape[2], k.shape[2]
    qi = torch.arange(tq)[:, None] + (tk - tq)
    kj = torch.arange(tk)[None, :]
    allowed = torch.ones(tq, tk, dtype=torch.bool)
    if causal:
        allowed &= kj <= qi
    if window is not None:
        allowed &= qi - kj < window
    allowed = allowed[None, None].to(q.device)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _check(q, k, v, atol=1e-10, block_q=4, block_k=3, rows=None, **mask):
    """Values and gradients of q, k, v against SDPA (``rows``: the query rows compared)."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ours = flash_attention(*leaves, block_q=block_q, block_k=block_k, **mask)
    refs = [t.clone().requires_grad_() for t in (q, k, v)]
    theirs = _sdpa(*refs, **mask)
    sel = (lambda x: x) if rows is None else (lambda x: x[:, :, rows])
    assert torch.allclose(sel(ours), sel(theirs), atol=atol), (sel(ours) - sel(theirs)).abs().max()
    weight = torch.randn(ours.shape, generator=torch.Generator().manual_seed(9), dtype=q.dtype)
    (sel(ours) * sel(weight)).sum().backward()
    (sel(theirs) * sel(weight)).sum().backward()
    for name, a, b in zip("qkv", leaves, refs):
        assert torch.allclose(a.grad, b.grad, atol=atol * 10), (name, (a.grad - b.grad).abs().max())


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])  # MHA, GQA, MQA
def test_matches_sdpa_causal_and_full(causal, heads):
    q, k, v = _qkv(2, heads[0], heads[1], 11, 11, 8)
    _check(q, k, v, causal=causal)


def test_prefill_after_cache_aligns_queries_with_the_last_keys():
    q, k, v = _qkv(1, 2, 1, 5, 13, 8, seed=1)
    _check(q, k, v, causal=True)


def test_padding_and_window():
    q, k, v = _qkv(2, 4, 2, 10, 10, 8, seed=2)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[0, 7:] = False  # right padding of row 0
    _check(q, k, v, causal=True, key_valid=valid)
    _check(q, k, v, causal=True, window=3)
    # Left padding: leading query rows see no key (SDPA returns NaN there); compare the rest,
    # and the reference gives exact zeros with a −inf log-sum-exp there.
    left = torch.ones(2, 10, dtype=torch.bool)
    left[1, :3] = False
    out, lse = flash_attention(q, k, v, key_valid=left, block_q=4, block_k=4, return_lse=True)
    assert torch.equal(out[1, :, :3], torch.zeros_like(out[1, :, :3]))
    assert torch.isinf(lse[1, :, :3]).all()
    _check(q[:1], k[:1], v[:1], causal=True, key_valid=left[:1])


def test_lse_is_the_row_logsumexp():
    q, k, v = _qkv(1, 2, 2, 6, 6, 4, seed=3)
    _, lse = flash_attention(q, k, v, causal=True, block_q=2, block_k=4, return_lse=True)
    scores = q @ k.transpose(-1, -2) / math.sqrt(4)
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), -math.inf)
    assert torch.allclose(lse, torch.logsumexp(scores, -1), atol=1e-12)


def test_block_sizes_do_not_change_the_result():
    q, k, v = _qkv(1, 2, 1, 17, 17, 8, seed=4)
    full = flash_attention(q, k, v, block_q=64, block_k=64)
    for bq, bk in [(1, 1), (3, 5), (16, 2)]:
        assert torch.allclose(flash_attention(q, k, v, block_q=bq, block_k=bk), full, atol=1e-12)


def test_varlen_packed_equals_each_sequence_alone():
    lengths = [3, 7, 1, 5]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(16, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(16, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(16, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)
    out = flash_attention_varlen(q, k, v, cu, block_q=2, block_k=4)
    weight = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out * weight).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    expected = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        seq = [t[s:e].transpose(0, 1)[None] for t in (q, k, v)]
        expected.append(_sdpa(*seq)[0].transpose(0, 1))
    expected = torch.cat(expected)
    (expected * weight).sum().backward()
    assert torch.allclose(out, expected, atol=1e-10)
    for a, t in zip(grads, (q, k, v)):
        assert torch.allclose(a, t.grad, atol=1e-9)


def test_bf16_inputs_accumulate_in_fp32():
    q, k, v = _qkv(1, 2, 2, 32, 32, 16, dtype=torch.float32, seed=6)
    ref = _sdpa(q.double(), k.double(), v.double()).float()
    out = flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), block_q=8, block_k=8)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 3e-2


def test_bad_shapes_are_named():
    q, k, v = _qkv(1, 3, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        flash_attention(q, k, v)
    with pytest.raises(ValueError, match="cover"):
        flash_attention_varlen(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                               torch.tensor([0, 3]))  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)")
def test_cuda_reference_matches_flash_attn_varlen():
    flash_attn = pytest.importorskip("flash_attn", reason="needs flash-attn (the gpu extra)")
    cu = torch.tensor([0, 40, 97, 128], dtype=torch.int32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(128, h, 64, device="cuda", generator=g, dtype=torch.bfloat16)
               for h in (8, 2, 2))  # fmt: skip
    theirs = flash_attn.flash_attn_varlen_func(q, k, v, cu, cu, 57, 57, causal=True)
    ours = flash_attention_varlen(q, k, v, cu)
    assert (ours.float() - theirs.float()).abs().max() < 2e-2
