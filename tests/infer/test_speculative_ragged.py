"""`RaggedKVCache`: two caches of different lengths as one padded batch — the layout the
attention sees, the key mask, and the write-back (with a crop) into each request's cache."""

from __future__ import annotations

import torch

from lmforge.infer.speculative_ragged import RaggedKVCache, left_aligned, pad_rows, valid_rows
from lmforge.models.kv_cache import KVCache


def test_gather_update_mask_and_commit():
    caches = [KVCache(2, 1, 1, 2, 8), KVCache(2, 1, 1, 2, 8)]
    for c, n in zip(caches, (3, 1)):
        c.keys[1][0, 0, :n] = torch.arange(n * 2.0).view(n, 2) + 1
        c.values[1][0, 0, :n] = -(torch.arange(n * 2.0).view(n, 2) + 1)
        c.length = n
    ragged = RaggedKVCache(caches, [1], extra=3)
    assert ragged.length == 3
    mask = ragged.extend(valid_rows([1, 2], 2, "cpu"))  # row 0: 1 new position, row 1: 2
    assert mask.tolist() == [[True, True, True, True, False],
                             [True, False, False, True, True]]  # fmt: skip
    new = torch.full((2, 1, 2, 2), 50.0)
    new[1, 0, 1] = 60.0
    k, v = ragged.update(1, new, -new)
    assert k.shape == (2, 1, 5, 2) and torch.equal(k[1, 0, 0], caches[1].keys[1][0, 0, 0])
    ragged.advance(2)
    ragged.extend(torch.tensor([[False], [True]]))  # one more step for row 1 only
    ragged.update(1, torch.full((2, 1, 1, 2), 70.0), torch.zeros(2, 1, 1, 2))
    ragged.advance(1)
    assert ragged.new_slots == [[3], [3, 4, 5]]
    ragged.commit(0, caches[0], 4)
    ragged.commit(1, caches[1], 3)  # keep 2 of the 3 new positions
    assert caches[0].length == 4 and caches[0].keys[1][0, 0, 3].tolist() == [50.0, 50.0]
    assert caches[1].length == 3
    assert caches[1].keys[1][0, 0, 1:3].tolist() == [[50.0, 50.0], [60.0, 60.0]]
    assert caches[1].values[1][0, 0, 2].tolist() == [-60.0, -60.0]
    ragged.commit(0, caches[0], 2)  # a crop below the past
    assert caches[0].length == 2


def test_padding_helpers():
    rows = [torch.tensor([1, 2]), torch.tensor([3])]
    assert pad_rows(rows, 3, fill=-1).tolist() == [[1, 2, -1], [3, -1, -1]]
    parts = [torch.ones(1, 2, 3, 4), None]
    out = left_aligned(parts, torch.empty(1, 2, 0, 4))
    assert out.shape == (2, 2, 3, 4) and out[0].eq(1).all() and out[1].eq(0).all()
