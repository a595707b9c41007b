"""Self-speculative drafters: the target model drafts for itself from its own hidden states.

All three implement the `lmforge.infer.drafting.Drafter` protocol (``propose`` /
``feedback``) for one sequence, plus ``observe(hidden, start)``: the target's final hidden
states ``[n, H]`` of positions ``start … start + n − 1`` once they are committed (the engine
calls it after every forward with the rows of the prompt and of the accepted path). Before
``propose(context)`` the drafter has seen positions up to ``len(context) − 2`` — every
position but the last token's, which the target has not run yet. A gap (prefix-cache hit,
preemption) resets the drafter's own state to start at ``start``: drafts may get worse, never
wrong (the target verifies every one).

* `MTPDrafter` — DeepSeek-V3's MTP modules as a chain of depth ≤ D (§2.2, "the MTP modules
  can be repurposed for speculative decoding"): depth d at position i reads h^{d−1}_i and the
  embedding of token i + d, so draft d comes from depth d at the last position. Each depth
  keeps a KV cache of its committed positions. Sampled drafts carry their distributions
  (exact rejection sampling in verification).
* `MedusaDrafter` — a candidate tree from the heads' top-k on the last hidden state (the
  sparse tree of `lmforge.infer.tree_attention.tree_from_choices`); the drafters of one
  engine may share a `MedusaBatch`, which runs the heads once per step for all requests.
* `EagleDrafter` — the EAGLE layer run over the tree depth by depth: a node's input is its
  parent's predicted feature and its own token's embedding; it attends the committed
  positions and its ancestors; the children are the top-k of LMHead(its output feature).

Medusa and EAGLE trees are deterministic (top-k), so they carry no ``probs``: exact sampled
verification draws from the target at each node and follows the tree while the draw matches
a child (`lmforge.infer.tree_attention.verify_tree`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.infer.drafting import Draft, DraftLengthSchedule, ModelDrafter
from lmforge.infer.params import SamplingParams
from lmforge.infer.sampling import processed_probs
from lmforge.infer.speculation import SpeculativeConfig
from lmforge.infer.tree_attention import (
    CandidateTree,
    default_choices,
    tree_from_choices,
    tree_mask,
)
from lmforge.models.eagle import EagleLayer, load_eagle_layer
from lmforge.models.kv_cache import KVCache
from lmforge.models.medusa import MedusaHeads, load_medusa_heads
from lmforge.nn.attention import AttentionBatch

__all__ = [
    "SPECULATIVE_METHODS",
    "EagleDrafter",
    "HiddenHistory",
    "MTPDrafter",
    "MedusaBatch",
    "MedusaDrafter",
    "TreeLevels",
    "draft_token",
    "speculative_config",
]

SPECULATIVE_METHODS = ("draft", "medusa", "mtp", "eagle")


class HiddenHistory:
    """The target's committed hidden states from position ``offset`` on (see module doc)."""

    def __init__(self) -> None:
        self.offset = 0
        self.states: torch.Tensor | None = None  # [n, H]
        self.resets = 0

    @property
    def end(self) -> int:
        """One past the last observed position."""
        return self.offset + (0 if self.states is None else self.states.shape[0])

    def add(self, hidden: torch.Tensor, start: int) -> bool:
        """Append ``hidden`` of positions ``start …``; False when the drafter's own state
        must be reset (the new rows do not continue the old ones)."""
        hidden = hidden.detach()
        if self.states is not None and start == self.end:
            self.states = torch.cat([self.states, hidden])
            return True
        self.offset, self.states = start, hidden.clone()
        self.resets += 1
        return False


def draft_token(
    logits: torch.Tensor, sampling: SamplingParams, generator
) -> tuple[int, torch.Tensor | None]:
    """A draft token from ``logits`` ``[V]``: the argmax when greedy (no distribution), else
    a draw (with ``generator``) from the processed distribution, returned with it."""
    if sampling.greedy:
        return int(logits.argmax()), None
    q = processed_probs(logits, sampling.temperature, sampling.top_k, sampling.top_p)
    return int(torch.multinomial(q, 1, generator=generator)), q


class MTPDrafter:
    """Chain drafts from the target's MTP modules (``target.mtp``, D of them)."""

    def __init__(self, target) -> None:
        if getattr(target, "mtp", None) is None:
            raise ValueError("MTPDrafter needs a CausalLM with MTP modules "
                             "(config.num_nextn_predict_layers > 0, built with_mtp=True)")  # fmt: skip
        self.target = target
        self.depth = len(target.mtp)
        self.history = HiddenHistory()
        self._reset()

    def _reset(self) -> None:
        self.caches: list[KVCache | None] = [None] * self.depth
        self.states: list[torch.Tensor | None] = [None] * self.depth  # committed h^d

    def observe(self, hidden: torch.Tensor, start: int) -> None:
        if not self.history.add(hidden, start):
            self._reset()

    def feedback(self, num_accepted: int) -> None:
        """Nothing to undo: uncommitted positions were already cropped in `propose`."""

    def depth_cache(self, d: int, needed: int) -> KVCache:
        """Depth ``d``'s KV cache with room for ``needed`` positions (grown, keeping what
        was computed, when too small)."""
        cache = self.caches[d]
        if cache is None or cache.max_len < needed:
            cfg = self.target.config
            p = next(self.target.parameters())
            size = min(max(2 * needed, 256), cfg.max_position_embeddings)
            new = KVCache(cfg.num_hidden_layers + self.depth, 1, cfg.num_key_value_heads,
                          cfg.head_dim, size, dtype=p.dtype, device=p.device,
                          value_dim=0 if cfg.use_mla else None)  # fmt: skip
            if cache is not None:  # keep what was computed
                layer = cfg.num_hidden_layers + d
                n = cache.length
                new.keys[layer][:, :, :n] = cache.keys[layer][:, :, :n]
                new.values[layer][:, :, :n] = cache.values[layer][:, :, :n]
                new.length = n
            cache = self.caches[d] = new
        return cache

    @torch.inference_mode()
    def propose(self, context: torch.Tensor, k: int, sampling: SamplingParams, generator) -> Draft:
        ids = context.tolist()
        last = len(ids) - 2  # last observed position
        h = self.history
        k = min(k, self.depth)
        if k <= 0 or h.states is None or h.end != last + 1:
            return Draft(context.new_empty(0), None)
        body, lm_head = self.target.model, self.target.lm_head
        prev = h.states  # h^0 over offset … last
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        for d in range(k):
            module = self.target.mtp[d]
            cache = self.depth_cache(d, last + 1 - h.offset + 1)
            s = cache.length  # committed positions already in this depth's cache
            pos = torch.arange(h.offset + s, last + 1, device=context.device)
            ext = ids + tokens
            look = torch.tensor([ext[i + d + 1] for i in pos.tolist()], device=context.device)
            cos, sin = body.rotary_emb(pos[None], prev.dtype)
            x = module.eh_proj(torch.cat(
                (module.enorm(body.embed_tokens(look)), module.hnorm(prev[s:])), -1
            ))[None]  # fmt: skip
            batch = AttentionBatch(seq_len=len(pos), past=s)
            out = module.shared_head.norm(module.block(x, cos, sin, batch, cache))[0]
            cache.advance(len(pos))
            committed = max(0, len(ids) - (d + 1) - 1 - h.offset + 1)  # positions i ≤ L−2−d
            stored = self.states[d]
            full = out if stored is None or s == 0 else torch.cat([stored[:s], out])
            self.states[d] = full[:committed]
            cache.crop(min(cache.length, committed))
            token, q = draft_token(lm_head(full[-1]).float(), sampling, generator)
            tokens.append(token)
            if q is not None:
                probs.append(q)
            prev = full
        return Draft(
            torch.tensor(tokens, device=context.device), torch.stack(probs) if probs else None
        )


class MedusaBatch:
    """Medusa heads evaluated once per engine step for all requests: the drafters of one
    engine share it, each `MedusaDrafter.observe` queues its new last hidden state, and the
    first ``propose`` of the next step runs the heads over every queued state in one batched
    call (`MedusaHeads.forward_stacked`: the heads' weights are read once, not once per
    request). A drafter whose state was not queued gets its own evaluation."""

    def __init__(self, heads: MedusaHeads) -> None:
        self.heads = heads
        self.pending: dict[MedusaDrafter, torch.Tensor] = {}
        self.ready: dict[MedusaDrafter, torch.Tensor] = {}

    def add(self, drafter: MedusaDrafter, hidden: torch.Tensor) -> None:
        self.pending[drafter] = hidden
        self.ready.pop(drafter, None)

    def logits(self, drafter: MedusaDrafter, hidden: torch.Tensor) -> torch.Tensor:
        """``[K, V]``: the heads on ``hidden``, the drafter's last observed state."""
        if drafter not in self.ready and drafter in self.pending:
            queued, self.pending = list(self.pending.items()), {}
            out = self.heads.forward_stacked(torch.stack([h for _, h in queued]))
            self.ready = {d: out[:, i] for i, (d, _) in enumerate(queued)}  # drops stale ones
        got = self.ready.pop(drafter, None)
        return got if got is not None else self.heads.forward_one(hidden)


class MedusaDrafter:
    """Candidate trees from Medusa heads on the last committed hidden state.

    ``choices``: the sparse tree (paths of top-k ranks); None: `default_choices` of the
    heads' depth and ``width`` (width 1: a chain of each head's top-1)."""

    def __init__(self, heads: MedusaHeads, choices=None, width: int = 1,
                 batch: MedusaBatch | None = None) -> None:  # fmt: skip
        self.heads, self.batch = heads, batch
        self.tree: CandidateTree = tree_from_choices(
            choices if choices is not None else default_choices(heads.num_heads, width)
        )
        self.last_hidden: torch.Tensor | None = None
        self.history_end = 0
        self._plans: dict[int, tuple] = {}

    def observe(self, hidden: torch.Tensor, start: int) -> None:
        self.last_hidden = hidden[-1].detach()
        self.history_end = start + hidden.shape[0]
        if self.batch is not None:
            self.batch.add(self, self.last_hidden)

    def feedback(self, num_accepted: int) -> None:
        pass

    @torch.inference_mode()
    def propose(self, context: torch.Tensor, k: int, sampling: SamplingParams, generator) -> Draft:
        if k <= 0 or self.last_hidden is None or self.history_end != len(context) - 1:
            return Draft(context.new_empty(0), None)
        plan = self._plans.get(k)
        if plan is None:  # the tree cut to depth k, as gather indices (once per k)
            tree = self.tree.truncate(len(self.tree.parents), k)
            depth_index = torch.tensor([d - 1 for d in tree.depths], device=context.device)
            rank_index = torch.tensor(tree.ranks, device=context.device)
            plan = self._plans[k] = (tree, depth_index, rank_index, max(tree.ranks) + 1)
        tree, depth_index, rank_index, width = plan
        if self.batch is None:
            logits = self.heads.forward_one(self.last_hidden)  # [K, V]
        else:
            logits = self.batch.logits(self, self.last_hidden)
        top = logits.topk(width, dim=-1).indices  # [K, width]
        return Draft(top[depth_index, rank_index], None, tree.parents)


@dataclass(frozen=True)
class TreeLevels:
    """A candidate tree laid out for drafting depth by depth, all index work done once per
    tree shape. Nodes are ordered by depth (`tree_from_choices`), so depth d is the node
    range ``bounds[d - 1]``. Features are kept in a table whose row 0 is the root and row
    1 + i node i; at depth d, ``sources[d - 1]`` are the table rows whose LM-head top-k
    depth d's tokens come from (each distinct parent once), ``pick_row`` / ``pick_rank``
    say which source row and which rank each node of depth d takes, ``parent_rows`` are
    the table rows of the nodes' parents (their input features) and ``mask`` ``[m, m]`` is
    the node-to-node ancestor mask (`tree_mask` without the root)."""

    tree: CandidateTree
    bounds: list[tuple[int, int]]
    sources: list[torch.Tensor]
    pick_row: list[torch.Tensor]
    pick_rank: list[torch.Tensor]
    parent_rows: list[torch.Tensor]
    width: list[int]
    mask: torch.Tensor

    @classmethod
    def build(cls, tree: CandidateTree, device) -> TreeLevels:
        depths, parents = tree.depths, tree.parents
        if depths != sorted(depths):
            raise ValueError(f"tree nodes must be ordered by depth, got depths {depths}")
        bounds, sources, pick_row, pick_rank, parent_rows, width = [], [], [], [], [], []
        for d in range(1, tree.max_depth + 1):
            nodes = [i for i, dd in enumerate(depths) if dd == d]
            rows = [parents[i] + 1 for i in nodes]  # table row of each node's parent
            distinct = sorted(set(rows))
            ranks = [tree.ranks[i] for i in nodes]
            bounds.append((nodes[0], nodes[-1] + 1))
            sources.append(torch.tensor(distinct, device=device))
            pick_row.append(torch.tensor([distinct.index(r) for r in rows], device=device))
            pick_rank.append(torch.tensor(ranks, device=device))
            parent_rows.append(torch.tensor(rows, device=device))
            width.append(max(ranks) + 1)
        mask = tree_mask(parents, device)[1:, 1:]
        return cls(tree, bounds, sources, pick_row, pick_rank, parent_rows, width, mask)


class EagleDrafter:
    """Tree drafts from an `EagleLayer` over the target's features (see module doc).

    ``choices``: paths of top-k ranks, each rank taken among the children of its parent;
    None: `default_choices` of ``depth`` and ``width``. Per draft: one layer call over the
    committed positions not yet run, then per depth one LM-head matmul over the distinct
    parents, one batched top-k, and one layer call over all nodes of the depth."""

    def __init__(self, target, layer: EagleLayer, depth: int = 4, width: int = 1,
                 choices=None) -> None:  # fmt: skip
        self.target, self.layer = target, layer
        self.tree = tree_from_choices(
            choices if choices is not None else default_choices(depth, width)
        )
        self.history = HiddenHistory()
        self.past: tuple[torch.Tensor, torch.Tensor] | None = None  # K/V of committed positions
        self._levels: dict[int, TreeLevels] = {}  # by depth limit

    def observe(self, hidden: torch.Tensor, start: int) -> None:
        if not self.history.add(hidden, start):
            self.past = None

    def feedback(self, num_accepted: int) -> None:
        pass

    def levels(self, k: int, device) -> TreeLevels:
        """The tree truncated to depth ``k``, laid out (`TreeLevels`, built once per k)."""
        plan = self._levels.get(k)
        if plan is None:
            tree = self.tree.truncate(len(self.tree.parents), k)
            plan = self._levels[k] = TreeLevels.build(tree, device)
        return plan

    @torch.inference_mode()
    def propose(self, context: torch.Tensor, k: int, sampling: SamplingParams, generator) -> Draft:
        last = context.shape[0] - 2
        h = self.history
        if k <= 0 or h.states is None or h.end != last + 1:
            return Draft(context.new_empty(0), None)
        embed, lm_head, dev = self.target.model.embed_tokens, self.target.lm_head, context.device
        # 1. committed positions not yet run: inputs (f_i, e_{i+1}) for i = offset + s … last
        s = 0 if self.past is None else self.past[0].shape[2]
        pos = torch.arange(h.offset + s, last + 1, device=dev)
        nxt = context[h.offset + s + 1 : last + 2]
        out, (k_new, v_new) = self.layer(embed(nxt)[None], h.states[s:][None], pos, self.past)
        if self.past is not None:
            k_new = torch.cat([self.past[0], k_new], dim=2)
            v_new = torch.cat([self.past[1], v_new], dim=2)
        self.past = (k_new, v_new)
        committed = k_new.shape[2]
        # 2. the tree, depth by depth: a feature table [root, node 0, node 1, …]
        plan = self.levels(k, dev)
        m = len(plan.tree.parents)
        table = out.new_empty(1 + m, out.shape[-1])
        table[0] = out[0, -1]
        tokens = context.new_empty(m)
        draft_k, draft_v = k_new, v_new
        depth = len(plan.bounds)
        for d, (a, b) in enumerate(plan.bounds):
            logits = lm_head(table[plan.sources[d]])  # [distinct parents, V]
            top = logits.topk(plan.width[d], dim=-1).indices
            level = top[plan.pick_row[d], plan.pick_rank[d]]
            tokens[a:b] = level
            if d + 1 == depth:
                break
            visible = torch.cat(
                [torch.ones(b - a, committed, dtype=torch.bool, device=dev), plan.mask[a:b, :b]], 1
            )
            node_pos = torch.full((b - a,), last + d + 1, device=dev)
            o, (kk, vv) = self.layer(
                embed(level)[None], table[plan.parent_rows[d]][None], node_pos,
                (draft_k, draft_v), visible,
            )  # fmt: skip
            draft_k, draft_v = torch.cat([draft_k, kk], 2), torch.cat([draft_v, vv], 2)
            table[1 + a : 1 + b] = o[0]
        return Draft(tokens, None, plan.tree.parents)


def speculative_config(
    method: str,
    target,
    *,
    draft_model=None,
    drafter_dir=None,
    num_draft_tokens: int = 4,
    tree_width: int = 1,
    adaptive: bool = True,
) -> SpeculativeConfig:
    """The engine's `SpeculativeConfig` for ``method`` (`SPECULATIVE_METHODS`): ``draft``
    needs ``draft_model`` (a `CausalLM` or an HF folder with the target's vocabulary),
    ``medusa`` / ``eagle`` a ``drafter_dir`` written by ``lmforge medusa train`` / ``lmforge
    eagle train`` (``<run>/medusa``, ``<run>/eagle``), ``mtp`` a target with MTP modules.
    ``num_draft_tokens``: the starting draft length / tree depth (adaptive between 1 and
    twice it, at most the number of heads or MTP depths); ``tree_width``: top-k at depth 1
    (and under the greedy path at depth 2) for Medusa / EAGLE trees."""
    if method not in SPECULATIVE_METHODS:
        raise ValueError(f"speculative method {method!r}: choose one of {SPECULATIVE_METHODS}")
    if num_draft_tokens < 1 or tree_width < 1:
        raise ValueError(f"num_draft_tokens={num_draft_tokens} and tree_width={tree_width} "
                         "must be ≥ 1")  # fmt: skip
    device = next(target.parameters()).device
    cap = 2 * num_draft_tokens
    if method == "draft":
        if draft_model is None:
            raise ValueError("--speculative draft needs a draft model (--draft-model DIR)")
        if not hasattr(draft_model, "parameters"):
            from lmforge.models.hf import load_model

            draft_model = load_model(draft_model, device=device).eval()
        if draft_model.config.vocab_size != target.config.vocab_size:
            raise ValueError(f"draft vocab_size={draft_model.config.vocab_size} differs from the "
                             f"target's {target.config.vocab_size}")  # fmt: skip
        factory = lambda: ModelDrafter(draft_model)  # noqa: E731
    elif method == "mtp":
        if getattr(target, "mtp", None) is None:
            raise ValueError("--speculative mtp needs a model with MTP modules "
                             "(num_nextn_predict_layers > 0 in config.json)")  # fmt: skip
        cap = len(target.mtp)
        factory = lambda: MTPDrafter(target)  # noqa: E731
    else:
        if drafter_dir is None:
            raise ValueError(f"--speculative {method} needs the trained drafter's folder "
                             f"(--drafter DIR, written by `lmforge {method} train`)")  # fmt: skip
        if method == "medusa":
            heads = load_medusa_heads(drafter_dir).to(device)
            cap = heads.num_heads
            choices, batch = default_choices(heads.num_heads, tree_width), MedusaBatch(heads)
            factory = lambda: MedusaDrafter(heads, choices, batch=batch)  # noqa: E731
        else:
            layer = load_eagle_layer(drafter_dir).to(device)
            depth = min(cap, 8)
            factory = lambda: EagleDrafter(target, layer, depth, tree_width)  # noqa: E731
    initial = min(num_draft_tokens, cap)
    schedule = DraftLengthSchedule(initial, 1, max(initial, cap), adaptive=adaptive)
    return SpeculativeConfig(factory, schedule, method)
