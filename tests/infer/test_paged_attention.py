"""The C++ paged decode attention (`lmforge.infer.paged_attention`) against per-row SDPA over
each row's gathered context — fp32 K/V, and fp16 / bf16 caches against the same SDPA over
their values widened to fp32 — and `PagedBatch` with the op against its gather + SDPA path
(with a half-precision cache too)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.infer import cache as cache_module
from lmforge.infer.cache import PagedBatch, PagedKVCache
from lmforge.infer.paged_attention import paged_attention_supported, paged_decode_attention
from lmforge.nn.cpp_ops import cpp_ops_available, cpp_ops_unavailable_reason

needs_op = pytest.mark.skipif(
    not cpp_ops_available(), reason=f"lmforge's C++ ops: {cpp_ops_unavailable_reason()}"
)


def _reference(q, keys, values, tables, lengths, bs, window):
    """Row by row: gather the visible slots, SDPA with K/V repeated over the GQA groups."""
    h, hkv = q.shape[1], keys.shape[1]
    rows = []
    for r in range(q.shape[0]):
        t = torch.arange(int(lengths[r]))
        if window is not None:
            t = t[max(0, len(t) - window) :]
        if len(t) == 0:
            rows.append(torch.zeros_like(q[r]))
            continue
        slots = tables[r][t // bs] * bs + t % bs
        k = keys[slots].repeat_interleave(h // hkv, 1).transpose(0, 1)  # [H, T, D]
        v = values[slots].repeat_interleave(h // hkv, 1).transpose(0, 1)
        rows.append(F.scaled_dot_product_attention(q[r][:, None], k, v)[:, 0])
    return torch.stack(rows)


@needs_op
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("d", [20, 64, 128])
def test_op_matches_per_row_sdpa(window, threads, d, torch_threads):
    """GQA 3; a head size the kernels are not specialised for (20: not a multiple of 8)
    and the two they are (64, 128: AVX-512 or AVX2 intrinsics where the CPU has them)."""
    g = torch.Generator().manual_seed(0)
    n, h, hkv, bs, w, blocks = 6, 6, 2, 4, 7, 48
    keys = torch.randn(blocks * bs, hkv, d, generator=g) * 2
    values = torch.randn(blocks * bs, hkv, d, generator=g)
    tables = torch.randperm(blocks, generator=g)[: n * w].view(n, w)
    lengths = torch.tensor([1, 4, 5, 17, 28, 0])  # one token, a block edge, a full table, none
    q = torch.randn(n, h, d, generator=g) * 2
    torch_threads(threads)
    out = paged_decode_attention(q, keys, values, tables, lengths, bs, window)
    expected = _reference(q, keys, values, tables, lengths, bs, window)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)
    assert out[-1].abs().max() == 0  # nothing visible: zeros


@needs_op
@pytest.mark.parametrize("kv_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("d", [20, 64, 128])
def test_op_reads_half_precision_caches(kv_dtype, threads, d, torch_threads):
    """fp16 / bf16 K/V (each kernel: the portable loop at D 20, intrinsics at 64 and 128):
    the same attention as fp32 SDPA over the cache's values widened to fp32."""
    g = torch.Generator().manual_seed(2)
    n, h, hkv, bs, w, blocks = 5, 4, 2, 4, 6, 40
    keys = (torch.randn(blocks * bs, hkv, d, generator=g) * 2).to(kv_dtype)
    values = torch.randn(blocks * bs, hkv, d, generator=g).to(kv_dtype)
    tables = torch.randperm(blocks, generator=g)[: n * w].view(n, w)
    lengths = torch.tensor([1, 6, 11, 24, 0])
    q = torch.randn(n, h, d, generator=g)
    torch_threads(threads)
    out = paged_decode_attention(q, keys, values, tables, lengths, bs, 7)
    assert out.dtype == torch.float32
    expected = _reference(q, keys.float(), values.float(), tables, lengths, bs, 7)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="keys and values both fp32, fp16 or bf16"):
        paged_decode_attention(q, keys, values.float(), tables, lengths, bs)


@needs_op
@pytest.mark.parametrize("groups", [1, 2, 3, 4, 5, 6, 7, 8, 16])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
def test_op_every_gqa_group_count(groups, kv_dtype, torch_threads):
    """Query heads per K/V head 1-8 (the AVX2 kernel is specialised for each) and 16 (the
    portable loop), D 64, rows of 1-70 tokens over scattered blocks (the kernel prefetches
    rows ahead and runs on into the value rows: short rows and rows ending mid-block)."""
    g = torch.Generator().manual_seed(groups)
    n, hkv, d, bs, w = 5, 2 if groups < 16 else 1, 64, 16, 5
    blocks = n * w + 3
    keys = (torch.randn(blocks * bs, hkv, d, generator=g) * 2).to(kv_dtype)
    values = torch.randn(blocks * bs, hkv, d, generator=g).to(kv_dtype)
    tables = torch.randperm(blocks, generator=g)[: n * w].view(n, w)
    lengths = torch.tensor([1, 3, 17, 64, 70])
    q = torch.randn(n, hkv * groups, d, generator=g)
    torch_threads(1)
    out = paged_decode_attention(q, keys, values, tables, lengths, bs)
    expected = _reference(q, keys.float(), values.float(), tables, lengths, bs, None)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


@needs_op
@pytest.mark.parametrize("n", [1, 3])
def test_op_splits_a_rows_heads_across_threads(n, torch_threads):
    """Fewer rows than twice the threads: each row's K/V heads are split into chunks (4
    K/V heads, GQA 2, D 128); the result does not depend on the split."""
    g = torch.Generator().manual_seed(1)
    h, hkv, d, bs, w, blocks = 8, 4, 128, 8, 3, 16
    keys = torch.randn(blocks * bs, hkv, d, generator=g)
    values = torch.randn(blocks * bs, hkv, d, generator=g)
    tables = torch.randperm(blocks, generator=g)[: n * w].view(n, w)
    lengths = torch.tensor([21, 9, 24][:n])
    q = torch.randn(n, h, d, generator=g)
    expected = _reference(q, keys, values, tables, lengths, bs, None)
    for threads in (1, 2):
        torch_threads(threads)
        out = paged_decode_attention(q, keys, values, tables, lengths, bs)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


@needs_op
def test_op_scales_and_fake_shape():
    g = torch.Generator().manual_seed(1)
    keys, values = torch.randn(16, 1, 8, generator=g), torch.randn(16, 1, 8, generator=g)
    q, tables, lengths = (
        torch.randn(2, 2, 8, generator=g),
        torch.tensor([[1, 3], [0, 2]]),
        torch.tensor([7, 3]),
    )
    out = paged_decode_attention(q, keys, values, tables, lengths, 4, scale=0.5)
    expected = _reference(q * (0.5 * 8**0.5), keys, values, tables, lengths, 4, None)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = paged_decode_attention(
            *(mode.from_tensor(x) for x in (q, keys, values, tables, lengths)), 4
        )
    assert fake.shape == q.shape and fake.dtype == q.dtype


@needs_op
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("key_only", [False, True])
def test_paged_batch_op_equals_gather_path(monkeypatch, key_only, kv_dtype):
    """The same decode rows through `PagedBatch.attend` with the op and with its gather +
    mask + SDPA groups (the path without the op): equal; a sliding window too; fp16 and
    bf16 caches beside fp32 queries (both paths widen their values) too."""
    torch.manual_seed(3)
    bs, h, d = 4, 4, 8
    hkv = 1 if key_only else 2
    cache = PagedKVCache(1, 16, bs, hkv, d, dtype=kv_dtype, key_only=key_only)
    cache.keys[0].normal_()
    if not key_only:
        cache.values[0].normal_()
    tables = torch.tensor([[3, 0, 0, 0], [7, 1, 0, 0], [2, 5, 8, 11]])
    positions = torch.tensor([2, 5, 13])
    q, k = torch.randn(3, h, d), torch.randn(3, hkv, d)
    v = k if key_only else torch.randn(3, hkv, d)
    slots = torch.stack([tables[i, p // bs] * bs + p % bs for i, p in enumerate(positions)])

    def run(window):
        batch = PagedBatch(cache, slots, num_decode=3, decode_blocks=tables,
                           decode_positions=positions, decode_lens=positions + 1)  # fmt: skip
        return batch.attend(0, q, k, v, window)

    assert paged_attention_supported(q, cache.keys[0])
    with_op = [run(None), run(6)]
    monkeypatch.setattr(cache_module, "paged_attention_supported", lambda *a: False)
    without = [run(None), run(6)]
    for a, b in zip(with_op, without):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_switched_off_by_environment(monkeypatch):
    from lmforge.nn import cpp_ops

    monkeypatch.setenv("LMFORGE_CPP_OPS", "0")
    assert not cpp_ops.cpp_ops_available()
    assert "LMFORGE_CPP_OPS=0" in cpp_ops.cpp_ops_unavailable_reason()
    assert not paged_attention_supported(torch.zeros(1, 1, 4), torch.zeros(4, 1, 4))
