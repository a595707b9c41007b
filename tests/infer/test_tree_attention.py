"""Candidate trees: depths, Medusa's sparse tree from choices, the tree attention mask
against a brute-force ancestor walk, and one tree-masked forward through the paged cache
giving, at every node, the logits of a plain forward over that node's own path."""

from __future__ import annotations

import random

import pytest
import torch

from lmforge import CausalLM, ModelConfig
from lmforge.infer.cache import PagedKVCache, PrefillChunk
from lmforge.infer.tree_attention import (
    TreePagedBatch,
    accepted_slots,
    chain_parents,
    default_choices,
    node_depths,
    tree_from_choices,
    tree_mask,
    window_mask,
)


def random_parents(m: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(-1, i) for i in range(m)]


def brute_force_mask(parents: list[int]) -> torch.Tensor:
    """Row r sees column c iff walking parent links from r reaches c (root: index 0)."""
    m = len(parents)
    mask = torch.zeros(m + 1, m + 1, dtype=torch.bool)
    for r in range(m + 1):
        node = r - 1
        mask[r, 0] = True
        while node >= 0:
            mask[r, node + 1] = True
            node = parents[node]
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_tree_mask_matches_brute_force(seed):
    parents = random_parents(12, seed)
    assert torch.equal(tree_mask(parents), brute_force_mask(parents))
    depths = node_depths(parents)
    mask = brute_force_mask(parents)
    assert depths == [int(mask[i + 1].sum()) - 1 for i in range(len(parents))]


def test_window_mask_by_positions():
    parents = [-1, -1, 0, 0, 2, 1]  # depths 1 1 2 2 3 2
    past, window = 5, 3
    got = window_mask(tree_mask(parents), past, window)
    positions = [past] + [past + d for d in node_depths(parents)]
    keys = list(range(past)) + positions
    for r, q in enumerate(positions):
        assert got[r].tolist() == [q - k < window for k in keys]


def test_chain_and_choices():
    assert torch.equal(tree_mask(chain_parents(4)), torch.ones(5, 5, dtype=torch.bool).tril())
    tree = tree_from_choices([(0, 0, 1), (1,), (0, 2)])  # prefixes (0,), (0, 0) are added
    # nodes: (0,) (1,) (0,0) (0,2) (0,0,1)
    assert tree.parents == [-1, -1, 0, 0, 2] and tree.ranks == [0, 1, 0, 2, 1]
    assert tree.depths == [1, 1, 2, 2, 3] and tree.max_depth == 3
    cut = tree.truncate(4, 2)
    assert cut.parents == [-1, -1, 0, 0] and cut.ranks == [0, 1, 0, 2]
    assert default_choices(3, 2) == [(0, 0, 0), (1, 0, 0), (0, 1)]
    assert accepted_slots([1, 3]) == [2, 4]
    with pytest.raises(ValueError, match="parents must precede"):
        node_depths([0])


@pytest.mark.parametrize("window", [None, 4])
@torch.no_grad()
def test_tree_forward_equals_forward_of_each_path(window):
    """Also with a sliding window of 4 (it bites: 6 cached tokens and paths of depth 3), the
    plain forward over each path applying the same window."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.2, sliding_window=window)  # fmt: skip
    model = CausalLM(cfg).eval()
    context = torch.randint(0, 50, (7,)).tolist()  # committed: 6 cached + the root
    parents = [-1, -1, 0, 0, 2, 1]
    nodes = torch.randint(0, 50, (len(parents),)).tolist()
    bs, past = 4, 6
    cache = PagedKVCache(2, 8, bs, 2, 8)
    cache.zero_blocks(list(range(8)))
    slots = torch.arange(past)
    model(torch.tensor([context[:past]]), position_ids=torch.arange(past)[None],
          cache=TreePagedBatch(cache, slots, prefills=[PrefillChunk(0, past, 0, None)]))  # fmt: skip
    n = 1 + len(parents)
    positions = [past] + [past + d for d in node_depths(parents)]
    batch = TreePagedBatch(cache, torch.arange(past, past + n),
                           prefills=[PrefillChunk(0, n, past, torch.arange(past + n))])  # fmt: skip
    batch.tree_masks = {0: tree_mask(parents)}
    logits = model(torch.tensor([[context[past]] + nodes]), position_ids=torch.tensor([positions]),
                   cache=batch).logits[0]  # fmt: skip
    for i in range(len(parents)):
        path, node = [], i
        while node >= 0:
            path.insert(0, nodes[node])
            node = parents[node]
        ref = model(torch.tensor([context + path])).logits[0, -1]
        torch.testing.assert_close(logits[i + 1], ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[0], model(torch.tensor([context])).logits[0, -1],
                               atol=1e-4, rtol=1e-4)  # fmt: skip
