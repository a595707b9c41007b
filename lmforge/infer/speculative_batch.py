"""Batched drafting: the draft forwards of several requests in one call.

In the engine every request owns a drafter (its own KV caches and hidden-state history), and
drafting request by request reads the drafter's weights once per request. `propose_batch`
groups the drafters that share weights — MTP drafters of one target, EAGLE drafters of one
layer and tree, draft-model drafters of one model — and runs each group's forwards over all
of its requests at once:

* the ragged inputs (each request has its own number of new positions) are right-padded to
  one ``[B, T]`` batch with per-row positions;
* each request's cached K/V is gathered into one buffer
  (`lmforge.infer.speculative_ragged.RaggedKVCache`: a request's cached
  positions first, padding up to the longest, then the new positions of every row in common
  slots) and a key-validity mask hides the padding;
* afterwards each request's new K/V is written back into its own cache, so every drafter is
  left in exactly the state its own ``propose`` would have left it in.

The drafts equal the per-request ones: the same tokens, the same tree, distributions equal up
to the float rounding of the batched matmuls (tests compare). Sampled drafts draw from each
request's own generator in the same order as alone (requests sharing one generator — or the
global RNG — draw in another order: different samples, the same distribution, so
verification stays exact). Drafters of other kinds — Medusa, whose heads batch through
`lmforge.infer.self_drafters.MedusaBatch`, or a user's own —, drafters whose attention has a
sliding window (see `windowed`) and groups of one propose alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmforge.infer.drafting import Draft, ModelDrafter
from lmforge.infer.params import SamplingParams
from lmforge.infer.sampling import processed_probs
from lmforge.infer.self_drafters import EagleDrafter, MTPDrafter, draft_token
from lmforge.infer.speculative_ragged import RaggedKVCache, left_aligned, pad_rows, valid_rows
from lmforge.nn.attention import AttentionBatch

__all__ = [
    "batch_key",
    "propose_batch",
    "propose_eagle_batch",
    "propose_model_batch",
    "propose_mtp_batch",
    "windowed",
]


# ---------------------------------------------------------------------- MTP
@torch.inference_mode()
def propose_mtp_batch(
    drafters: Sequence[MTPDrafter],
    contexts: Sequence[torch.Tensor],
    ks: Sequence[int],
    samplings: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[Draft]:
    """`MTPDrafter.propose` for drafters of one target, each depth's block run once over all
    requests (the same steps as `MTPDrafter.propose`, row by row)."""
    target = drafters[0].target
    body, lm_head, n_layers = target.model, target.lm_head, target.config.num_hidden_layers
    drafts: list[Draft | None] = [None] * len(drafters)
    rows, ids, lasts, depth_of, prev, tokens, probs = [], {}, {}, {}, {}, {}, {}
    for i, (drafter, context, k) in enumerate(zip(drafters, contexts, ks)):
        h, last = drafter.history, context.shape[0] - 2
        k = min(k, drafter.depth)
        if k <= 0 or h.states is None or h.end != last + 1:
            drafts[i] = Draft(context.new_empty(0), None)
            continue
        rows.append(i)
        ids[i], lasts[i], depth_of[i] = context.tolist(), last, k
        prev[i], tokens[i], probs[i] = h.states, [], []
    device = contexts[0].device
    for d in range(max(depth_of.values(), default=0)):
        act = [i for i in rows if depth_of[i] > d]
        module, layer = target.mtp[d], n_layers + d
        caches, starts, positions, looks = [], [], [], []
        for i in act:
            h = drafters[i].history
            cache = drafters[i].depth_cache(d, lasts[i] + 1 - h.offset + 1)
            s = cache.length
            pos = list(range(h.offset + s, lasts[i] + 1))
            ext = ids[i] + tokens[i]
            caches.append(cache)
            starts.append(s)
            positions.append(pos)
            looks.extend(ext[p + d + 1] for p in pos)
        lengths = [len(p) for p in positions]
        t = max(lengths)
        x = module.eh_proj(torch.cat((
            module.enorm(body.embed_tokens(torch.tensor(looks, device=device))),
            module.hnorm(torch.cat([prev[i][s:] for i, s in zip(act, starts)])),
        ), -1))  # fmt: skip
        x = pad_rows(x.split(lengths), t)
        pos = pad_rows([torch.tensor(p or [0], device=device) for p in positions], t)
        cos, sin = body.rotary_emb(pos, x.dtype)
        ragged = RaggedKVCache(caches, [layer], t)
        key_valid = ragged.extend(valid_rows(lengths, t, device))
        batch = AttentionBatch(seq_len=t, past=ragged.length, key_valid=key_valid)
        out = module.shared_head.norm(module.block(x, cos, sin, batch, ragged))
        ragged.advance(t)
        lasts_out = []
        for b, (i, s, n) in enumerate(zip(act, starts, lengths)):
            drafter, offset = drafters[i], drafters[i].history.offset
            committed = max(0, len(ids[i]) - (d + 1) - 1 - offset + 1)  # positions i ≤ L−2−d
            ragged.commit(b, caches[b], min(s + n, committed))
            stored = drafter.states[d]
            full = out[b, :n] if stored is None or s == 0 else torch.cat([stored[:s], out[b, :n]])
            drafter.states[d] = full[:committed]
            prev[i] = full
            lasts_out.append(full[-1])
        logits = lm_head(torch.stack(lasts_out)).float()
        for b, i in enumerate(act):
            token, q = draft_token(logits[b], samplings[i], generators[i])
            tokens[i].append(token)
            if q is not None:
                probs[i].append(q)
    for i in rows:
        drafts[i] = Draft(torch.tensor(tokens[i], device=device),
                          torch.stack(probs[i]) if probs[i] else None)  # fmt: skip
    return drafts


# ---------------------------------------------------------------------- EAGLE
@torch.inference_mode()
def propose_eagle_batch(
    drafters: Sequence[EagleDrafter],
    contexts: Sequence[torch.Tensor],
    ks: Sequence[int],
    samplings: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[Draft]:
    """`EagleDrafter.propose` for drafters of one layer and tree: the catch-up over new
    committed positions, then per tree depth one LM-head call and one layer call, each over
    all requests (a request whose tree is shallower stops taking tokens at its depth)."""
    first = drafters[0]
    layer, embed, lm_head = first.layer, first.target.model.embed_tokens, first.target.lm_head
    device = contexts[0].device
    drafts: list[Draft | None] = [None] * len(drafters)
    rows = []
    for i, (drafter, context, k) in enumerate(zip(drafters, contexts, ks)):
        h, last = drafter.history, context.shape[0] - 2
        if k <= 0 or h.states is None or h.end != last + 1:
            drafts[i] = Draft(context.new_empty(0), None)
        else:
            rows.append(i)
    if not rows:
        return drafts
    # 1. committed positions not yet run, every row at once
    starts, lengths, positions, nexts, feats = [], [], [], [], []
    for i in rows:
        drafter, last = drafters[i], contexts[i].shape[0] - 2
        h = drafter.history
        s = 0 if drafter.past is None else drafter.past[0].shape[2]
        starts.append(s)
        positions.append(torch.arange(h.offset + s, last + 1, device=device))
        nexts.append(contexts[i][h.offset + s + 1 : last + 2])
        feats.append(h.states[s:])
        lengths.append(last + 1 - h.offset - s)
    t = max(lengths)
    e = pad_rows(embed(torch.cat(nexts)).split(lengths), t)
    f = pad_rows(feats, t)
    pos = pad_rows(positions, t)
    like = layer.k_proj.weight.new_empty(1, layer.num_kv_heads, 0, layer.head_dim)
    pasts = [drafters[i].past for i in rows]
    past_k = left_aligned([None if p is None else p[0] for p in pasts], like)
    past_v = left_aligned([None if p is None else p[1] for p in pasts], like)
    new_ok = valid_rows(lengths, t, device)
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    mask = torch.cat([
        valid_rows(starts, past_k.shape[2], device)[:, None, :].expand(-1, t, -1),
        (causal[None] & new_ok[:, None, :]) | torch.eye(t, dtype=torch.bool, device=device),
    ], -1)[:, None]  # fmt: skip
    out, (k_new, v_new) = layer(e, f, pos, (past_k, past_v), mask)  # per-row positions
    committed = []
    for b, (i, n) in enumerate(zip(rows, lengths)):
        drafter = drafters[i]
        k_row, v_row = k_new[b : b + 1, :, :n], v_new[b : b + 1, :, :n]
        if drafter.past is not None:
            k_row = torch.cat([drafter.past[0], k_row], dim=2)
            v_row = torch.cat([drafter.past[1], v_row], dim=2)
        drafter.past = (k_row, v_row)
        committed.append(k_row.shape[2])
    # 2. the trees, depth by depth, over a shared layout: the deepest row's plan
    plans = [drafters[i].levels(ks[i], device) for i in rows]
    plan = max(plans, key=lambda p: len(p.bounds))
    for p in plans:
        if p.tree.parents != plan.tree.parents[: len(p.tree.parents)]:
            raise ValueError("EAGLE drafters batched together must share one tree")
    m = len(plan.tree.parents)
    table = out.new_empty(len(rows), 1 + m, out.shape[-1])
    table[:, 0] = out[
        torch.arange(len(rows), device=device), torch.tensor(lengths, device=device) - 1
    ]
    tokens = torch.empty(len(rows), m, dtype=torch.long, device=device)
    draft_k = left_aligned([drafters[i].past[0] for i in rows], like)
    draft_v = left_aligned([drafters[i].past[1] for i in rows], like)
    seen = valid_rows(committed, draft_k.shape[2], device)  # [B, C]
    depths = [len(p.bounds) for p in plans]
    lasts = torch.tensor([contexts[i].shape[0] - 2 for i in rows], device=device)
    for d, (a, b) in enumerate(plan.bounds):
        logits = lm_head(table[:, plan.sources[d]])  # [B, distinct parents, V]
        top = logits.topk(plan.width[d], dim=-1).indices
        level = top[:, plan.pick_row[d], plan.pick_rank[d]]  # [B, m_d]
        tokens[:, a:b] = level
        if d + 1 == max(depths):
            break
        visible = torch.cat(
            [seen[:, None, :].expand(-1, b - a, -1), plan.mask[a:b, :b].expand(len(rows), -1, -1)],
            -1,
        )[:, None]
        node_pos = (lasts + d + 1)[:, None].expand(-1, b - a)
        o, (kk, vv) = layer(
            embed(level), table[:, plan.parent_rows[d]], node_pos, (draft_k, draft_v), visible
        )
        draft_k, draft_v = torch.cat([draft_k, kk], 2), torch.cat([draft_v, vv], 2)
        table[:, 1 + a : 1 + b] = o
    for b, (i, p) in enumerate(zip(rows, plans)):
        drafts[i] = Draft(tokens[b, : len(p.tree.parents)].clone(), None, p.tree.parents)
    return drafts


# ---------------------------------------------------------------------- draft model
@torch.inference_mode()
def propose_model_batch(
    drafters: Sequence[ModelDrafter],
    contexts: Sequence[torch.Tensor],
    ks: Sequence[int],
    samplings: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[Draft]:
    """`ModelDrafter.propose` for drafters of one model: each of the k autoregressive steps
    is one forward over all requests (the first feeds each request's uncached suffix)."""
    model = drafters[0].model
    max_pos = model.config.max_position_embeddings
    device = contexts[0].device
    drafts: list[Draft | None] = [None] * len(drafters)
    rows, depth, feeds = [], [], []
    for i, (drafter, context, k) in enumerate(zip(drafters, contexts, ks)):
        ids = context.tolist()
        drafter.proposal_start = len(ids)
        k = min(k, max_pos - len(ids))
        if k <= 0:
            drafts[i] = Draft(context.new_empty(0), None)
            continue
        drafter.reuse_prefix(ids, len(ids) + k)
        rows.append(i)
        depth.append(k)
        feeds.append(context[len(drafter.cached_ids) :])
    if not rows:
        return drafts
    caches = [drafters[i].cache for i in rows]
    lengths = [len(f) for f in feeds]
    t0, steps = max(lengths), max(depth)
    ragged = RaggedKVCache(caches, range(model.config.num_hidden_layers), t0 + steps - 1)
    starts = [len(drafters[i].cached_ids) for i in rows]
    feed = pad_rows(feeds, t0)
    pos = pad_rows([torch.arange(s, s + n, device=device) for s, n in zip(starts, lengths)], t0)
    last_row = torch.tensor(lengths, device=device) - 1
    tokens = [[] for _ in rows]
    probs = [[] for _ in rows]
    for step in range(steps):
        active = [step < k for k in depth]
        valid = valid_rows(lengths, t0, device) if step == 0 else torch.tensor(active)[:, None]
        mask = ragged.extend(valid.to(device))
        hidden = model.model(feed, position_ids=pos, attention_mask=mask, cache=ragged)
        logits = model.lm_head(hidden[torch.arange(len(rows), device=device), last_row])
        nxt = []
        for b, i in enumerate(rows):
            if not active[b]:
                nxt.append(0)
                continue
            drafter, sampling = drafters[i], samplings[i]
            drafter.num_forwards += 1
            drafter.cached_ids.extend(feed[b, : lengths[b] if step == 0 else 1].tolist())
            if sampling.greedy:
                token = int(logits[b].argmax())
            else:
                q = processed_probs(logits[b], sampling.temperature, sampling.top_k, sampling.top_p)
                token = int(torch.multinomial(q, 1, generator=generators[i]))
                probs[b].append(q)
            tokens[b].append(token)
            nxt.append(token)
        feed = torch.tensor(nxt, device=device)[:, None]
        pos = pos[torch.arange(len(rows), device=device), last_row][:, None] + 1
        last_row = torch.zeros_like(last_row)
    for b, i in enumerate(rows):
        ragged.commit(b, drafters[i].cache, len(drafters[i].cached_ids))
        drafts[i] = Draft(torch.tensor(tokens[b], device=device),
                          torch.stack(probs[b]) if probs[b] else None)  # fmt: skip
    return drafts


# ---------------------------------------------------------------------- grouping
def windowed(module: torch.nn.Module) -> bool:
    """Whether any attention inside ``module`` has a sliding window (`RaggedKVCache` puts
    padding between a row's cached and new positions, so slot distances are not position
    distances: such drafters propose alone)."""
    return any(getattr(sub, "window", None) is not None for sub in module.modules())


def batch_key(drafter) -> tuple | None:
    """Drafters with equal keys share weights and batch together; None: never batched."""
    if isinstance(drafter, MTPDrafter):
        return None if windowed(drafter.target.mtp) else ("mtp", id(drafter.target))
    if isinstance(drafter, EagleDrafter):
        tree = drafter.tree
        return ("eagle", id(drafter.target), id(drafter.layer), tuple(tree.parents),
                tuple(tree.ranks))  # fmt: skip
    if type(drafter) is ModelDrafter:
        return None if windowed(drafter.model) else ("model", id(drafter.model))
    return None


BATCHED = {"mtp": propose_mtp_batch, "eagle": propose_eagle_batch, "model": propose_model_batch}


def propose_batch(
    drafters: Sequence,
    contexts: Sequence[torch.Tensor],
    ks: Sequence[int],
    samplings: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[Draft]:
    """``[drafters[i].propose(contexts[i], ks[i], samplings[i], generators[i]) for i …]``
    with the forwards of drafters that share weights batched (see module doc)."""
    groups: dict[tuple, list[int]] = {}
    drafts: list[Draft | None] = [None] * len(drafters)
    for i, drafter in enumerate(drafters):
        key = batch_key(drafter)
        if key is None:
            drafts[i] = drafter.propose(contexts[i], ks[i], samplings[i], generators[i])
        else:
            groups.setdefault(key, []).append(i)
    for key, members in groups.items():
        if len(members) == 1:
            i = members[0]
            drafts[i] = drafters[i].propose(contexts[i], ks[i], samplings[i], generators[i])
            continue
        args = [
            [seq[i] for i in members] for seq in (drafters, contexts, ks, samplings, generators)
        ]
        out = BATCHED[key[0]](*args)
        for i, draft in zip(members, out):
            drafts[i] = draft
    return drafts
