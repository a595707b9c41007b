"""Speculative decoding inside the engine: per-request drafting, verification and KV
bookkeeping for continuous batching over the paged cache.

One engine step with speculation (`lmforge.infer.engine.Engine.step`):

1. **draft** — every running request that is decoding, has speculation on
   (``SamplingParams.speculative``) and plain-sampling settings asks its own `Drafter` (one
   per request, built by `SpeculativeConfig.drafter`) for a chain or candidate tree of at
   most its current draft length (`DraftLengthSchedule`, adaptive per request); the drafts
   are appended to its tokens, so the scheduler allocates their KV slots and schedules
   ``[last token, drafts…]`` as one chunk;
2. **schedule** — a request preempted or cut short by the token budget loses its drafts
   (or the tail of them) before the forward;
3. **verify** — one forward over the whole ragged batch; a draft chunk gets logits at every
   row, depth-based positions and, for a tree, the tree attention mask
   (`lmforge.infer.tree_attention`); `verify_draft` picks the accepted path and the next
   token (exact rejection sampling for sampled chains, exact draw-and-follow for
   deterministic candidates, or Medusa's typical acceptance when the request asks);
4. **keep** — the accepted path's K/V is moved to consecutive slots (`compact_kv`), the
   rejected tokens leave the sequence before the scheduler commits (so the prefix cache
   only ever registers accepted tokens), then the accepted tokens and the next one go
   through the engine's usual stop checks (EOS, stop ids, stop strings, max_tokens) one by one.

Self-drafters receive the target's hidden states of every committed row (``observe``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmforge.infer.cache import PagedKVCache
from lmforge.infer.drafting import Draft, Drafter, DraftLengthSchedule
from lmforge.infer.params import SamplingParams
from lmforge.infer.sampling import apply_min_p, process_logits
from lmforge.infer.speculative import verify_sampled
from lmforge.infer.tree_attention import chain_parents, node_depths, verify_tree
from lmforge.infer.typical_acceptance import verify_typical

__all__ = [
    "SpeculationStats",
    "SpeculativeConfig",
    "compact_kv",
    "draft_depth",
    "speculation_eligible",
    "target_probs",
    "verify_draft",
]


@dataclass
class SpeculativeConfig:
    """``drafter()`` builds one `Drafter` per request (sharing weights); ``schedule`` is the
    draft length (tree depth) per round, adapted per request; ``method`` names it in stats."""

    drafter: Callable[[], Drafter]
    schedule: DraftLengthSchedule = field(default_factory=lambda: DraftLengthSchedule(4, 1, 8))
    method: str = "draft"


@dataclass
class SpeculationStats:
    """Counters over all verification rounds of an engine."""

    rounds: int = 0
    emitted: int = 0  # accepted drafts + the target's own token, per round
    drafted_nodes: int = 0
    reached: list[int] = field(default_factory=list)  # rounds whose draft reached depth d+1
    accepted: list[int] = field(default_factory=list)  # rounds accepting ≥ d+1 tokens

    def record(self, max_depth: int, num_nodes: int, num_accepted: int) -> None:
        self.rounds += 1
        self.emitted += num_accepted + 1
        self.drafted_nodes += num_nodes
        while len(self.reached) < max_depth:
            self.reached.append(0)
            self.accepted.append(0)
        for d in range(max_depth):
            self.reached[d] += 1
            self.accepted[d] += d < num_accepted

    @property
    def mean_accepted_length(self) -> float:
        """τ: tokens emitted per verification forward (accepted drafts + 1)."""
        return self.emitted / self.rounds if self.rounds else 0.0

    @property
    def acceptance_per_depth(self) -> list[float]:
        """P(the d-th draft token is accepted | the draft reached depth d), d = 1, 2, …
        (an unconditional rate: a rejection at depth 1 counts as a miss at every depth)."""
        return [a / r if r else float("nan") for a, r in zip(self.accepted, self.reached)]

    def as_dict(self) -> dict:
        return {
            "spec_rounds": self.rounds,
            "spec_mean_accepted_length": self.mean_accepted_length,
            "spec_acceptance_per_depth": self.acceptance_per_depth,
            "spec_drafted_nodes": self.drafted_nodes,
        }


def speculation_eligible(params: SamplingParams) -> bool:
    """Requests whose next-token rule depends only on the context's logits (no penalties,
    constraint or min_tokens, whose state would change inside a drafted path)."""
    return (
        params.speculative
        and params.repetition_penalty == 1
        and not params.presence_penalty
        and not params.frequency_penalty
        and params.constraint is None
        and not params.min_tokens
    )


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The engine's sampling distribution for rows ``[..., V]``: temperature → top-k →
    top-p → min-p → softmax (as `Engine._sample_row` without penalties)."""
    rows = process_logits(logits.float(), params.temperature, params.top_k, params.top_p)
    return apply_min_p(rows, params.min_p).softmax(-1)


def verify_draft(
    rows: torch.Tensor, draft: Draft, params: SamplingParams, generator
) -> tuple[list[int], int]:
    """Accepted path (node indices) and the next token for ``rows`` ``[m + 1, V]`` (the
    root's and every node's logits)."""
    tokens = draft.tokens.tolist()
    parents = draft.parents if draft.parents is not None else chain_parents(len(tokens))
    if params.greedy:  # one argmax over all rows, then a walk over plain ints
        return verify_tree(rows.argmax(-1).tolist(), tokens, parents, lambda best: best)
    if params.acceptance == "typical":
        probs = target_probs(rows, params)
        return verify_typical(
            probs, tokens, parents, params.typical_epsilon, params.typical_delta, generator
        )
    if draft.probs is not None and draft.parents is None:
        n, token = verify_sampled(
            target_probs(rows, params), draft.probs.float(), draft.tokens, generator
        )
        return list(range(n)), token
    return verify_tree(
        rows,
        tokens,
        parents,
        lambda row: int(torch.multinomial(target_probs(row, params), 1, generator=generator)),
    )


def draft_depth(draft: Draft) -> int:
    return max(node_depths(draft.parents), default=0) if draft.parents else draft.num_nodes


def compact_kv(cache: PagedKVCache, src: list[int], dst: list[int]) -> None:
    """Copy every layer's K/V of slots ``src`` to slots ``dst`` (the accepted path's K/V to
    the positions after the root); sources are gathered before any write."""
    moves = [(s, d) for s, d in zip(src, dst) if s != d]
    if not moves:
        return
    device = cache.keys[0].device
    s = torch.tensor([m[0] for m in moves], device=device)
    d = torch.tensor([m[1] for m in moves], device=device)
    for buf in (*cache.keys, *cache.values):
        buf.index_copy_(0, d, buf.index_select(0, s))
