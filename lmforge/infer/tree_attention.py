"""Candidate trees for self-speculative decoding and their one-forward verification.

A draft tree (Medusa, Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework
with Multiple Decoding Heads", §2.1.2; SpecInfer, Miao et al. 2024, §3) is a set of
candidate continuations that share prefixes. Its nodes are listed parents-first; node i has
``parents[i]`` (-1: the root, the sequence's last committed token) and depth
``depth(i) = depth(parent) + 1``. The target checks every node in ONE forward over
``[root, node_0 … node_{m-1}]`` where

* node i sits at position ``start + depth(i)`` (depth-based positions: siblings share one),
* row r attends to the whole committed context and to its own ancestors (itself and the
  root included) — the *tree attention mask* (`tree_mask`),

so the logits at row r are exactly the target's next-token logits after the path from the
root to r. The K/V of the nodes land in consecutive cache slots after the root; once a path
is accepted its K/V is moved to the slots of positions ``start + 1 …`` (`accepted_slots`),
and the rest is overwritten later.

Medusa's *sparse tree* is a list of paths of top-k indices ("choices"): ``(0, 1)`` means the
top-1 token of head 1 followed by the top-2 token of head 2. `tree_from_choices` turns it into
parents (missing prefixes are added), `default_choices` builds a small one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmforge.infer.cache import PagedBatch, PrefillChunk

__all__ = [
    "CandidateTree",
    "TreePagedBatch",
    "accepted_slots",
    "chain_parents",
    "default_choices",
    "node_depths",
    "tree_from_choices",
    "tree_mask",
    "verify_tree",
    "window_mask",
]


def chain_parents(n: int) -> list[int]:
    """Parents of a chain of ``n`` drafts: node i's parent is node i − 1 (node 0: root)."""
    return list(range(-1, n - 1))


def node_depths(parents: Sequence[int]) -> list[int]:
    """Depth of every node (children of the root: 1). Parents must come before children."""
    depths: list[int] = []
    for i, p in enumerate(parents):
        if not -1 <= p < i:
            raise ValueError(f"tree node {i} has parent {p}; parents must precede children")
        depths.append(1 if p < 0 else depths[p] + 1)
    return depths


def tree_mask(parents: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """``[m + 1, m + 1]`` bool: row r (0: the root, r ≥ 1: node r − 1) may attend column c
    iff c is r or an ancestor of r (the root is everyone's ancestor)."""
    m = len(parents)
    visible = torch.zeros(m + 1, m + 1, dtype=torch.bool, device=device)
    visible[:, 0] = True
    for i, p in enumerate(parents):
        row = visible[i + 1]
        row[i + 1] = True
        if p >= 0:
            row |= visible[p + 1]
    return visible


def accepted_slots(path: Sequence[int]) -> list[int]:
    """Row offsets (1 + node index) of an accepted root-to-leaf ``path`` of node indices:
    the K/V at these offsets after the root moves to offsets 1, 2, … (`TreePagedBatch`)."""
    return [1 + i for i in path]


@dataclass
class CandidateTree:
    """A tree shape: ``parents`` per node and, for Medusa-style trees, the top-k index each
    node takes at its depth (``ranks``; node i's token is head ``depth(i)``'s
    ``ranks[i]``-th most likely token)."""

    parents: list[int]
    ranks: list[int]

    @property
    def depths(self) -> list[int]:
        return node_depths(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depths, default=0)

    def truncate(self, max_nodes: int, max_depth: int) -> CandidateTree:
        """The first nodes (a parents-first prefix is still a tree) within both limits."""
        keep = [i for i, d in enumerate(self.depths) if d <= max_depth][:max_nodes]
        index = {old: new for new, old in enumerate(keep)}
        parents = [-1 if self.parents[i] < 0 else index[self.parents[i]] for i in keep]
        return CandidateTree(parents, [self.ranks[i] for i in keep])


def tree_from_choices(choices: Sequence[Sequence[int]]) -> CandidateTree:
    """Medusa's sparse tree: one node per distinct prefix of the ``choices`` paths (each a
    tuple of top-k indices, one per depth), ordered by depth then path."""
    paths = set()
    for choice in choices:
        choice = tuple(int(c) for c in choice)
        if not choice or any(c < 0 for c in choice):
            raise ValueError(f"tree choice {choice!r} must be a non-empty tuple of ranks ≥ 0")
        for d in range(1, len(choice) + 1):
            paths.add(choice[:d])
    ordered = sorted(paths, key=lambda path: (len(path), path))
    index = {path: i for i, path in enumerate(ordered)}
    parents = [index[path[:-1]] if len(path) > 1 else -1 for path in ordered]
    return CandidateTree(parents, [path[-1] for path in ordered])


def default_choices(depth: int, width: int) -> list[tuple[int, ...]]:
    """A small sparse tree: the top-``width`` tokens at depth 1, then the greedy chain below
    each of them, plus the top-``width`` alternatives under the greedy path at depth 2."""
    choices = [(r,) + (0,) * (depth - 1) for r in range(width)]
    if depth >= 2:
        choices += [(0, r) for r in range(1, width)]
    return choices


def verify_tree(
    rows: torch.Tensor | Sequence,
    tokens: Sequence[int],
    parents: Sequence[int],
    draw: Callable[[torch.Tensor], int],
) -> tuple[list[int], int]:
    """Exact verification of deterministic candidates (a tree or a chain without ``probs``).

    ``rows`` ``[m + 1, ...]``: the target's logits at the root and at each node (row 1 + i
    is node i; anything indexable by row, e.g. the rows' argmaxes as a list); ``draw(row) →
    token`` picks the target's next token from one row (argmax for greedy, a draw from the
    processed distribution when sampling). From the root, draw the
    target's token; if a child of the current node carries it, move there and repeat; else
    emit it. Every emitted token is exactly the target's own draw given the path so far, so
    the output distribution is the target's (and greedy output is target greedy): a
    deterministic candidate x has q = δ_x, so the rejection rule min(1, p(x)/q(x)) with
    residual norm(max(0, p − δ_x)) is exactly "draw from p and compare" (SpecInfer's
    multi-candidate verification, Miao et al. 2024, Algorithm 2, with point-mass drafts).

    Returns the accepted path (node indices, root to leaf) and the next token."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        children.setdefault(p, []).append(i)
    path: list[int] = []
    node = -1
    while True:
        token = draw(rows[node + 1])
        match = next((c for c in children.get(node, ()) if tokens[c] == token), None)
        if match is None:
            return path, token
        path.append(match)
        node = match


class TreePagedBatch(PagedBatch):
    """A `PagedBatch` whose multi-token chunks may be candidate trees: ``tree_masks`` maps a
    chunk's flat ``start`` to its `tree_mask` (the chunk is the root plus the nodes); such a
    chunk sees all its ``past`` context plus its ancestors (within a sliding window, where the
    layer has one: `window_mask`). Other chunks stay causal. Masks are built once per chunk
    and window and shared by all layers."""

    tree_masks: dict[int, torch.Tensor]

    def _prefill_mask(self, chunk: PrefillChunk, window: int | None) -> torch.Tensor | None:
        """Built once per chunk and window, shared by every layer of the forward."""
        key = ("chunk", chunk.start, window)
        if key not in self._masks:
            self._masks[key] = self._chunk_mask(chunk, window)
        return self._masks[key]

    def _chunk_mask(self, chunk: PrefillChunk, window: int | None) -> torch.Tensor | None:
        tree = getattr(self, "tree_masks", {}).get(chunk.start)
        if tree is None:
            return super()._prefill_mask(chunk, window)
        past = torch.ones(chunk.length, chunk.past, dtype=torch.bool, device=tree.device)
        visible = torch.cat([past, tree], dim=1)
        if window is not None:
            visible &= window_mask(tree, chunk.past, window)
        return visible


def window_mask(tree: torch.Tensor, past: int, window: int) -> torch.Tensor:
    """``[m + 1, past + m + 1]``: a sliding window over a tree chunk with depth-based
    positions — row r at position ``past + depth(r)`` sees key position j iff
    position − j < ``window`` (the committed keys sit at 0 … past − 1, the tree's at their
    depths; ``depth(r)`` is the number of r's ancestors, read off its `tree_mask` row)."""
    query = past + tree.sum(1) - 1  # [m + 1]
    keys = torch.cat([torch.arange(past, device=tree.device), query])
    return query[:, None] - keys[None, :] < window
