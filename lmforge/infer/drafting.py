"""Drafts and drafters for speculative decoding: what a drafter proposes (`Draft`: a chain
or a candidate tree), the `Drafter` protocol every drafter implements (the draft model here,
MTP / Medusa / EAGLE in `lmforge.infer.self_drafters`), `ModelDrafter` (a small causal LM
drafting autoregressively with its own KV cache) and the adaptive draft length
(`DraftLengthSchedule`).

Both decoders use these: the dense batch-1 loop (`lmforge.infer.speculative`) and the engine
(`lmforge.infer.speculation`), where each request owns one drafter; several requests'
drafters can draft in one batched call (`lmforge.infer.speculative_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from lmforge.infer.checks import is_int
from lmforge.infer.params import SamplingParams
from lmforge.infer.sampling import processed_probs
from lmforge.models.kv_cache import KVCache

if TYPE_CHECKING:
    from lmforge.models.transformer import CausalLM

__all__ = ["Draft", "DraftLengthSchedule", "Drafter", "ModelDrafter"]


# ---------------------------------------------------------------------- draft length
@dataclass
class DraftLengthSchedule:
    """Number of draft tokens per round: starts at ``initial``; when ``adaptive``, +1 after a
    round where every draft was accepted and −1 after one with a rejection, within
    [``minimum``, ``maximum``]. (Choosing k from past rounds only keeps sampling exact.)"""

    initial: int = 4
    minimum: int = 1
    maximum: int = 8
    adaptive: bool = True

    def __post_init__(self) -> None:
        for name in ("initial", "minimum", "maximum"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"DraftLengthSchedule.{name}={value!r} must be an integer ≥ 0")
        if not self.minimum <= self.initial <= self.maximum:
            raise ValueError(
                f"DraftLengthSchedule needs minimum ≤ initial ≤ maximum, got "
                f"{self.minimum}, {self.initial}, {self.maximum}"
            )

    def next(self, k: int, num_drafted: int, num_accepted: int) -> int:
        """The draft length after a round that drafted and accepted the given counts."""
        if not self.adaptive:
            return k
        if num_accepted == num_drafted:
            return min(self.maximum, k + 1)
        return max(self.minimum, k - 1)


# ---------------------------------------------------------------------- drafters
@dataclass
class Draft:
    """Proposed ``tokens`` ``[n]`` (n ≤ k, int64) and ``probs`` ``[n, V]``: the processed
    distribution each token was drawn from (None when greedy — only tokens are needed — or
    when the drafts are deterministic candidates, e.g. a top-k tree).

    ``parents``: None for a chain; for a candidate tree (`lmforge.infer.tree_attention`),
    node i's parent index (-1: the last committed token), parents before children. ``k``
    then bounds the tree's depth."""

    tokens: torch.Tensor
    probs: torch.Tensor | None = None
    parents: list[int] | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.tokens.shape[0])

    def truncate(self, n: int) -> Draft:
        """The first ``n`` nodes (a parents-first prefix of a tree is a tree)."""
        return Draft(
            self.tokens[:n],
            None if self.probs is None else self.probs[:n],
            None if self.parents is None else self.parents[:n],
        )


@runtime_checkable
class Drafter(Protocol):
    """Anything that proposes draft tokens for a single sequence."""

    def propose(
        self,
        context: torch.Tensor,
        k: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> Draft:
        """Up to ``k`` tokens continuing ``context`` ``[L]``. Greedy when
        ``sampling.temperature`` is 0; otherwise token i must be a draw (with ``generator``)
        from ``probs[i]`` = `processed_probs` of the drafter's logits with ``sampling``'s
        temperature, top-k and top-p, given the context and the tokens before it."""
        ...

    def feedback(self, num_accepted: int) -> None:
        """The target accepted the first ``num_accepted`` tokens of the last proposal."""
        ...


class ModelDrafter:
    """A small causal LM (same vocabulary as the target) drafting autoregressively with its
    own KV cache.

    The cache always holds a prefix of the current sequence: `feedback` crops it to the
    accepted drafts, and `propose` re-checks the cached ids against the context (so a drafter
    may be reused across calls and prompts), then feeds only the uncached suffix.
    """

    def __init__(self, model: CausalLM) -> None:
        self.model = model
        self.cache: KVCache | None = None
        self.cached_ids: list[int] = []  # the token ids whose K/V the cache holds
        self.num_forwards = 0
        self.proposal_start = 0  # context length of the latest proposal

    def propose(
        self,
        context: torch.Tensor,
        k: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> Draft:
        ids = context.tolist()
        self.proposal_start = len(ids)
        k = min(k, self.model.config.max_position_embeddings - len(ids))
        if k <= 0:
            return Draft(context.new_empty(0), None)
        self.reuse_prefix(ids, len(ids) + k)
        feed = context[len(self.cached_ids) :]
        tokens, probs = [], []
        for _ in range(k):
            with torch.inference_mode():
                logits = self.model(feed[None], cache=self.cache, logits_to_keep=1).logits
            self.num_forwards += 1
            self.cached_ids.extend(feed.tolist())
            row = logits[0, -1]
            if sampling.greedy:
                token = row.argmax(-1, keepdim=True)
            else:
                q = processed_probs(row, sampling.temperature, sampling.top_k, sampling.top_p)
                token = torch.multinomial(q, 1, generator=generator)
                probs.append(q)
            tokens.append(token)
            feed = token
        tokens = torch.cat(tokens)
        return Draft(tokens, torch.stack(probs) if probs else None)

    def feedback(self, num_accepted: int) -> None:
        """Drop the rejected drafts' K/V; the token the target emitted is fed next round."""
        keep = self.proposal_start + num_accepted
        if self.cache is not None and keep < len(self.cached_ids):
            self.cache.crop(keep)
            del self.cached_ids[keep:]

    def reuse_prefix(self, ids: list[int], needed: int) -> None:
        """Keep the longest cached prefix of ``ids`` (at most all but its last token, whose
        logits are needed); allocate a bigger cache if ``needed`` positions won't fit."""
        if self.cache is None or self.cache.max_len < needed:
            size = min(max(2 * needed, 256), self.model.config.max_position_embeddings)
            self.cache = KVCache.for_model(self.model, 1, size)
            self.cached_ids = []
        keep = 0
        limit = min(len(self.cached_ids), len(ids) - 1)
        while keep < limit and self.cached_ids[keep] == ids[keep]:
            keep += 1
        self.cache.crop(keep)
        del self.cached_ids[keep:]
