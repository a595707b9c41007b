"""Self-drafters against brute force: the MTP chain (per-depth KV caches grown over rounds
of partial acceptance) equals recomputing the MTP modules over the whole sequence; the EAGLE
tree equals running the EAGLE layer causally over each node's own path; Medusa's tree takes
each head's top-k; a gap in the observed hidden states resets a drafter."""

from __future__ import annotations

import torch

from lmforge import CausalLM, ModelConfig
from lmforge.infer.params import SamplingParams
from lmforge.infer.self_drafters import EagleDrafter, MedusaDrafter, MTPDrafter
from lmforge.models.eagle import EagleLayer
from lmforge.models.medusa import MedusaHeads
from lmforge.models.mtp import mtp_hidden_states

GREEDY = SamplingParams(temperature=0)


def model(mtp=3) -> CausalLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.3, num_nextn_predict_layers=mtp)  # fmt: skip
    return CausalLM(cfg).eval()


@torch.no_grad()
def brute_mtp(m: CausalLM, ids: list[int], depth: int) -> list[int]:
    drafts: list[int] = []
    last = len(ids) - 2
    for d in range(1, depth + 1):
        ext = torch.tensor([ids + drafts])
        hidden = m.model(ext)
        _, cos, sin, batch = m.model.prepare(ext)
        states = mtp_hidden_states(m.mtp, m.model.embed_tokens, hidden, ext, cos, sin, batch)
        drafts.append(int(m.lm_head(states[d - 1][0, last]).argmax()))
    return drafts


@torch.no_grad()
def test_mtp_chain_equals_full_recompute_over_rounds():
    m = model()
    seq = torch.randint(0, 40, (30,)).tolist()
    hidden = m.model(torch.tensor([seq]))[0]
    drafter = MTPDrafter(m)
    seen, length = 0, 6
    for step in [1, 3, 2, 1, 4, 2]:
        drafter.observe(hidden[seen : length - 1], seen)
        seen = length - 1
        draft = drafter.propose(torch.tensor(seq[:length]), 3, GREEDY, None)
        assert draft.tokens.tolist() == brute_mtp(m, seq[:length], 3)
        assert draft.probs is None and draft.parents is None
        length += step
    drafter.observe(hidden[seen : length - 1], seen)
    sampled = drafter.propose(torch.tensor(seq[:length]), 2, SamplingParams(temperature=0.9),
                              torch.Generator().manual_seed(0))  # fmt: skip
    assert sampled.probs.shape == (2, 40)
    assert torch.allclose(sampled.probs.sum(-1), torch.ones(2))


@torch.no_grad()
def test_eagle_tree_equals_per_path_forward():
    m = model(mtp=0)
    torch.manual_seed(1)
    layer = EagleLayer.for_model(m.config).eval()
    seq = torch.randint(0, 40, (12,)).tolist()
    feats = m.model(torch.tensor([seq]))[0]
    drafter = EagleDrafter(m, layer, depth=3, width=2)
    drafter.observe(feats[:11], 0)
    draft = drafter.propose(torch.tensor(seq), 3, GREEDY, None)
    embed, L = m.model.embed_tokens, len(seq)

    def out_after(path: list[int]) -> torch.Tensor:
        outs = []
        for j in range(len(path) + 1):  # features: real ones, then each step's prediction
            f = torch.cat([feats[: L - 1]] + [o[None] for o in outs])
            e = embed(torch.tensor(seq[1:] + path[:j]))
            o, _ = layer(e[None], f[None], torch.arange(L - 1 + j))
            outs.append(o[0, -1])
        return outs[-1]

    parents, tokens = draft.parents, draft.tokens.tolist()
    for i, p in enumerate(parents):
        path, node = [], p
        while node >= 0:
            path.insert(0, tokens[node])
            node = parents[node]
        rank = drafter.tree.ranks[i]
        assert tokens[i] == int(m.lm_head(out_after(path)).topk(rank + 1).indices[rank])


@torch.no_grad()
def test_medusa_tree_and_reset_on_gap():
    m = model(mtp=0)
    heads = MedusaHeads(32, 40, 3, lm_head=m.lm_head)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    drafter = MedusaDrafter(heads, choices=[(0, 0, 0), (1,), (0, 1)])
    seq = torch.randint(0, 40, (9,))
    hidden = m.model(seq[None])[0]
    assert drafter.propose(seq, 3, GREEDY, None).num_nodes == 0  # nothing observed yet
    drafter.observe(hidden[:8], 0)
    draft = drafter.propose(seq, 3, GREEDY, None)
    top = heads(hidden[7]).topk(2, dim=-1).indices
    # nodes: (0,) (1,) (0,0) (0,1) (0,0,0)
    assert draft.parents == [-1, -1, 0, 0, 2]
    assert draft.tokens.tolist() == [top[0, 0], top[0, 1], top[1, 0], top[1, 1], top[2, 0]]
    assert drafter.propose(seq, 1, GREEDY, None).parents == [-1, -1]  # depth-limited
    mtp = MTPDrafter(model())
    mtp.observe(hidden[:4], 0)
    mtp.observe(hidden[6:8], 6)  # a gap: restart from position 6
    assert mtp.history.offset == 6 and mtp.history.resets == 2
    assert mtp.propose(seq, 2, GREEDY, None).num_nodes == 2


@torch.no_grad()
def test_medusa_batch_runs_the_heads_once_per_step():
    """Drafters sharing a `MedusaBatch` propose what each would alone; the heads run once
    for all queued states, and a drafter observed after that evaluation gets fresh logits."""
    from lmforge.infer.self_drafters import MedusaBatch

    m = model(mtp=0)
    heads = MedusaHeads(32, 40, 3, lm_head=m.lm_head)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    calls = []
    stacked = heads.forward_stacked
    heads.forward_stacked = lambda h: calls.append(h.shape[0]) or stacked(h)
    pool = MedusaBatch(heads)
    seqs = [torch.randint(0, 40, (n,)) for n in (6, 9, 7)]
    shared = [MedusaDrafter(heads, width=2, batch=pool) for _ in seqs]
    alone = [MedusaDrafter(heads, width=2) for _ in seqs]
    for step in range(2):
        for seq, a, b in zip(seqs, shared, alone):
            hidden = m.model(seq[None])[0, : len(seq) - 1 + step]
            a.observe(hidden, 0)
            b.observe(hidden, 0)
        calls.clear()
        for seq, a, b in zip(seqs, shared, alone):
            ctx = torch.cat([seq, seq[:1]]) if step else seq  # one token past the observed
            got = a.propose(ctx, 3, GREEDY, None).tokens
            assert torch.equal(got, b.propose(ctx, 3, GREEDY, None).tokens)
        assert calls == [3, 1, 1, 1]  # the shared three at once, then each lone drafter
    shared[0].observe(m.model(seqs[0][None])[0], 0)  # a newer state than the evaluated one
    got = shared[0].propose(torch.cat([seqs[0], seqs[0][:1]]), 3, GREEDY, None).tokens
    top = heads(m.model(seqs[0][None])[0, -1]).topk(2, dim=-1).indices
    assert got[0] == top[0, 0] and got[1] == top[0, 1]


def test_speculative_config_builds_and_refuses(tmp_path):
    import pytest

    from lmforge.infer.self_drafters import speculative_config
    from lmforge.models.medusa import save_medusa_heads

    m = model()
    spec = speculative_config("mtp", m, num_draft_tokens=5)
    assert spec.schedule.initial == 3 and spec.schedule.maximum == 3  # capped by D
    assert isinstance(spec.drafter(), MTPDrafter)
    save_medusa_heads(MedusaHeads(32, 40, 2, lm_head=m.lm_head), tmp_path / "medusa")
    spec = speculative_config("medusa", m, drafter_dir=tmp_path / "medusa", tree_width=2)
    assert spec.drafter().tree.parents == [-1, -1, 0, 0, 1]  # (0) (1) (0,0) (0,1) (1,0)
    with pytest.raises(ValueError, match="--drafter"):
        speculative_config("eagle", m)
    with pytest.raises(ValueError, match="MTP modules"):
        speculative_config("mtp", model(mtp=0))
    with pytest.raises(ValueError, match="choose one of"):
        speculative_config("lookahead", m)
