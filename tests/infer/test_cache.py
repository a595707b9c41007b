"""Paged KV cache: the block allocator (ref counts, prefix keys, LRU eviction) and ragged
paged attention against a plain per-sequence SDPA reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.infer.cache import (
    BlockAllocator,
    PagedBatch,
    PagedKVCache,
    PrefillChunk,
    block_key,
    decode_groups,
)


def test_allocate_and_free_track_reference_counts():
    alloc = BlockAllocator(4)
    a, b = alloc.allocate(), alloc.allocate()
    assert (a, b) == (0, 1) and alloc.num_free == 2
    alloc.free([a, b])
    assert alloc.num_free == 4
    with pytest.raises(RuntimeError, match="freed more often"):
        alloc.free([a])
    for _ in range(4):
        alloc.allocate()
    with pytest.raises(RuntimeError, match="no free"):
        alloc.allocate()


def test_keys_chain_the_parent():
    k1 = block_key(None, [1, 2])
    assert block_key(None, (1, 2)) == k1
    assert block_key(hash(k1), [3, 4]) != block_key(None, [3, 4])


def test_lookup_shares_and_revives_cached_blocks():
    alloc = BlockAllocator(3)
    block = alloc.allocate()
    key = block_key(None, [5, 6])
    alloc.register(block, key)
    assert alloc.lookup(key) == block and alloc.ref_counts[block] == 2  # shared
    alloc.free([block])
    alloc.free([block])
    assert alloc.num_free == 3  # free, but still cached
    assert alloc.lookup(key) == block and alloc.num_free == 2  # revived out of the queue
    assert alloc.lookup(block_key(None, [6, 5])) is None
    assert (alloc.hits, alloc.queries) == (2, 3)


def test_first_writer_wins_and_disabled_caching_never_hits():
    alloc = BlockAllocator(3)
    a, b = alloc.allocate(), alloc.allocate()
    key = block_key(None, [1])
    alloc.register(a, key)
    alloc.register(b, key)
    assert alloc.lookup(key) == a
    off = BlockAllocator(2, enable_prefix_caching=False)
    off.register(off.allocate(), key)
    assert off.lookup(key) is None and not off.cached


def test_eviction_is_least_recently_freed_and_tail_first():
    alloc = BlockAllocator(4)
    seq1 = [alloc.allocate(), alloc.allocate()]  # blocks 0, 1
    seq2 = [alloc.allocate(), alloc.allocate()]  # blocks 2, 3
    keys = [block_key(None, [i]) for i in range(4)]
    for block, key in zip(seq1 + seq2, keys):
        alloc.register(block, key)
    alloc.free(seq1)  # queue: 1, 0  (tail first)
    alloc.free(seq2)  # queue: 1, 0, 3, 2
    assert alloc.allocate() == 1 and alloc.lookup(keys[1]) is None  # evicted
    assert alloc.evictions == 1
    assert alloc.lookup(keys[0]) == 0  # still cached
    assert alloc.allocate() == 3


def _reference_attention(q, k, v, window):
    """Per-sequence causal SDPA over full K/V ``[1, H, T, D]`` (GQA by repetition)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    t = k.shape[2]
    i = torch.arange(t)
    mask = i[None, :] <= i[:, None]
    if window is not None:
        mask &= i[:, None] - i[None, :] < window
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("window", [None, 3])
def test_paged_attention_matches_per_sequence_sdpa(window):
    """Three sequences in one flattened batch: a decode step (11 cached + 1 new), a second
    chunk of a prefill (5 cached + 4 new) and a fresh prefill (6 new)."""
    torch.manual_seed(0)
    bs, h, hkv, d = 4, 4, 2, 8
    lens, new = [12, 9, 6], [1, 4, 6]
    cache = PagedKVCache(1, 16, bs, hkv, d)
    cache.zero_blocks(list(range(16)))
    tables = [[7, 2, 9], [0, 5, 11], [3, 14]]
    q = [torch.randn(1, h, n, d) for n in lens]
    k = [torch.randn(1, hkv, n, d) for n in lens]
    v = [torch.randn(1, hkv, n, d) for n in lens]
    slot = lambda s, p: tables[s][p // bs] * bs + p % bs  # noqa: E731
    for s, (n, m) in enumerate(zip(lens, new)):  # cached past, written as a previous step would
        for p in range(n - m):
            cache.keys[0][slot(s, p)] = k[s][0, :, p]
            cache.values[0][slot(s, p)] = v[s][0, :, p]
    flat = lambda xs: torch.cat([x[:, :, n - m :] for x, n, m in zip(xs, lens, new)], 2)  # noqa: E731
    slots = [slot(s, p) for s, (n, m) in enumerate(zip(lens, new)) for p in range(n - m, n)]
    ctx = torch.tensor([slot(1, p) for p in range(lens[1])])
    batch = PagedBatch(
        cache,
        torch.tensor(slots),
        num_decode=1,
        decode_blocks=torch.tensor([tables[0]]),
        decode_lens=torch.tensor([12]),
        decode_positions=torch.tensor([11]),
        prefills=[PrefillChunk(1, 4, 5, ctx), PrefillChunk(5, 6, 0, None)],
    )
    out = batch.attention(0, flat(q), flat(k), flat(v), window)
    expected = [_reference_attention(*xs, window) for xs in zip(q, k, v)]
    torch.testing.assert_close(out, flat(expected))


def test_decode_groups_bound_the_padding():
    assert decode_groups([3], [40]) == [(0, 1, 3, 40)]
    widths = [1, 1, 2, 2, 9, 10, 30]
    lengths = [5, 16, 20, 31, 140, 150, 470]
    groups = decode_groups(widths, lengths, max_padding=4)
    assert groups == [(0, 4, 2, 31), (4, 6, 10, 150), (6, 7, 30, 470)]
    assert decode_groups(widths, lengths, max_padding=1000) == [(0, 7, 30, 470)]


@pytest.mark.parametrize("window", [None, 6])
def test_grouped_decode_equals_one_padded_group(window):
    """Rows split into groups (a single-row group attends its exact context, unmasked)."""
    torch.manual_seed(1)
    bs, h, hkv, d = 4, 4, 2, 8
    cache = PagedKVCache(1, 16, bs, hkv, d)
    cache.keys[0].normal_()
    cache.values[0].normal_()
    tables = torch.tensor([[3, 0, 0, 0], [7, 1, 0, 0], [2, 5, 8, 11]])
    positions = torch.tensor([2, 5, 13])
    q, k, v = torch.randn(3, h, d), torch.randn(3, hkv, d), torch.randn(3, hkv, d)
    slots = torch.stack([tables[i, p // bs] * bs + p % bs for i, p in enumerate(positions)])

    def run(groups):
        batch = PagedBatch(
            cache, slots, num_decode=3, decode_blocks=tables, decode_positions=positions,
            decode_lens=positions + 1, decode_groups=groups,
        )  # fmt: skip
        return batch.attend(0, q, k, v, window)

    one = run([])
    torch.testing.assert_close(run([(0, 2, 2, 6), (2, 3, 4, 14)]), one)
    torch.testing.assert_close(run([(0, 1, 1, 3), (1, 2, 2, 6), (2, 3, 4, 14)]), one)


def test_key_only_cache_attends_with_values_equal_to_keys():
    """MLA's pool: no value blocks, each slot's value is its key (one shared latent head).
    A decode row, a second prefill chunk and a fresh prefill against per-sequence SDPA with
    v = k, and the pool holds half the bytes of a K/V pool of the same shape."""
    torch.manual_seed(2)
    bs, h, d = 4, 4, 12
    lens, new = [10, 7, 5], [1, 3, 5]
    cache = PagedKVCache(2, 16, bs, 1, d, key_only=True)
    assert cache.values == [] and cache.key_only
    full = PagedKVCache(2, 16, bs, 1, d)
    assert cache.nbytes * 2 == full.nbytes == sum(t.nbytes for t in (*full.keys, *full.values))
    assert cache.bytes_per_token == 2 * d * 4  # 2 layers × the latent, fp32
    assert cache.nbytes == 16 * PagedKVCache.bytes_per_block(2, bs, 1, d, torch.float32, True)
    cache.zero_blocks(list(range(16)))
    tables = [[6, 1, 12], [0, 9], [4, 15]]
    q = [torch.randn(1, h, n, d) for n in lens]
    k = [torch.randn(1, 1, n, d) for n in lens]
    slot = lambda s, p: tables[s][p // bs] * bs + p % bs  # noqa: E731
    for s, (n, m) in enumerate(zip(lens, new)):
        for p in range(n - m):
            cache.keys[1][slot(s, p)] = k[s][0, :, p]
    flat = lambda xs: torch.cat([x[:, :, n - m :] for x, n, m in zip(xs, lens, new)], 2)  # noqa: E731
    slots = [slot(s, p) for s, (n, m) in enumerate(zip(lens, new)) for p in range(n - m, n)]
    batch = PagedBatch(
        cache,
        torch.tensor(slots),
        num_decode=1,
        decode_blocks=torch.tensor([tables[0]]),
        decode_lens=torch.tensor([10]),
        decode_positions=torch.tensor([9]),
        prefills=[
            PrefillChunk(1, 3, 4, torch.tensor([slot(1, p) for p in range(7)])),
            PrefillChunk(4, 5, 0, None),
        ],
    )
    keys = flat(k)
    out = batch.attention(1, flat(q), keys, keys)
    expected = [_reference_attention(qs, ks, ks, None) for qs, ks in zip(q, k)]
    torch.testing.assert_close(out, flat(expected))
    with pytest.raises(ValueError, match="stores no values"):
        batch.attention(1, flat(q), keys, keys.clone())
