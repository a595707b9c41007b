"""Batched drafting against per-request drafting: over rounds of growing contexts (ragged
lengths, per-request draft lengths, partial acceptance, a reset), drafters that propose
together through `propose_batch` return exactly the drafts that twin drafters proposing one
by one return (same tokens and trees; sampled drafts drawn from per-request generators with
the same seeds), their caches stay equal, and each group's weights run once per step."""

from __future__ import annotations

import pytest
import torch

from lmforge import CausalLM, ModelConfig
from lmforge.infer.drafting import ModelDrafter
from lmforge.infer.params import SamplingParams
from lmforge.infer.self_drafters import EagleDrafter, MedusaDrafter, MTPDrafter
from lmforge.infer.speculative_batch import batch_key, propose_batch
from lmforge.models.eagle import EagleLayer
from lmforge.models.medusa import MedusaHeads
from lmforge.models.presets import preset_config

GREEDY = SamplingParams(temperature=0)
SAMPLED = SamplingParams(temperature=0.9, top_k=20)


def model(mtp=0, layers=2, seed=0) -> CausalLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96,
                      initializer_range=0.3, num_nextn_predict_layers=mtp)  # fmt: skip
    return CausalLM(cfg).eval()


SEQS = [torch.randint(0, 40, (40,), generator=torch.Generator().manual_seed(n)) for n in range(4)]
# per request: (context length, draft length) of each round — ragged, some k = 0 or cut
ROUNDS = [[(5, 3), (9, 2), (6, 3), (12, 1)],
          [(6, 1), (10, 3), (9, 0), (13, 3)],
          [(8, 3), (11, 3), (13, 2), (14, 3)],
          [(11, 2), (12, 3), (16, 3), (20, 2)]]  # fmt: skip


def run_rounds(m, make, sampling, observe=True, feedback=None):
    """Twin drafters per request; each round batched vs alone. Returns the batched twins."""
    hidden = [m.model(s[None])[0] for s in SEQS]
    alone, batched = [make() for _ in SEQS], [make() for _ in SEQS]
    gens = [[torch.Generator().manual_seed(10 + i) for i in range(4)] for _ in range(2)]
    seen = [0] * 4
    for r in range(len(ROUNDS[0])):
        contexts, ks = [], []
        for i, (length, k) in enumerate(row[r] for row in ROUNDS):
            if observe:
                start = 0 if (i == 3 and r == 2) else seen[i]  # request 3 resets in round 2
                for d in (alone[i], batched[i]):
                    d.observe(hidden[i][start : length - 1], start)
                seen[i] = length - 1
            contexts.append(SEQS[i][:length])
            ks.append(k)
        got = propose_batch(batched, contexts, ks, [sampling] * 4, gens[0])
        for i in range(4):
            want = alone[i].propose(contexts[i], ks[i], sampling, gens[1][i])
            assert torch.equal(got[i].tokens, want.tokens), (r, i)
            assert got[i].parents == want.parents
            if want.probs is None:
                assert got[i].probs is None
            else:
                assert torch.allclose(got[i].probs, want.probs, atol=1e-5)
            if feedback is not None:
                n = feedback(r, i, want.num_nodes)
                alone[i].feedback(n)
                batched[i].feedback(n)
    return alone, batched


def counting(module, calls):
    forward = module.forward
    module.forward = lambda *a, **kw: calls.append(a[0].shape[0]) or forward(*a, **kw)


def deepseek_mtp() -> CausalLM:
    torch.manual_seed(0)
    cfg = preset_config("deepseek-tiny", vocab_size=40, num_nextn_predict_layers=3)
    m = CausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("kind", ["gqa", "mla"])
@torch.no_grad()
def test_mtp_batch_equals_per_request_drafts(kind):
    """GQA blocks, and DeepSeek-V3's MLA + MoE blocks (the latent cache, absorbed form)."""
    m = model(mtp=3) if kind == "gqa" else deepseek_mtp()
    calls = []
    counting(m.mtp[0].block, calls)
    for sampling in (GREEDY, SAMPLED):
        calls.clear()
        alone, batched = run_rounds(m, lambda: MTPDrafter(m), sampling)
        assert calls.count(4) >= 3 and max(calls) == 4  # depth 1's block: once for the batch
        for a, b in zip(alone, batched):
            for d in range(3):
                assert (a.caches[d] is None) == (b.caches[d] is None)
                if a.caches[d] is None:
                    continue
                assert a.caches[d].length == b.caches[d].length
                n = a.caches[d].length
                layer = m.config.num_hidden_layers + d
                assert torch.allclose(a.caches[d].keys[layer][:, :, :n],
                                      b.caches[d].keys[layer][:, :, :n], atol=1e-5)  # fmt: skip
                assert torch.allclose(a.states[d], b.states[d], atol=1e-5)


@torch.no_grad()
def test_eagle_batch_equals_per_request_trees():
    m = model()
    torch.manual_seed(1)
    layer = EagleLayer.for_model(m.config).eval()
    one = torch.randn(1, 3, 32)
    pos = torch.arange(5, 8)
    past = (torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8))
    mask = torch.rand(3, 8) > 0.3
    mask[:, 5:] = torch.ones(3, 3).tril().bool()
    want, (k, v) = layer(one, one.flip(-1), pos, past, mask)
    two = torch.cat([one, one.flip(1)])  # per-row positions [B, T] and masks [B, 1, T, P + T]
    rows = torch.stack([pos, pos + 4])
    masks = torch.stack([mask, mask.flip(0)])[:, None]
    past2 = (past[0].expand(2, -1, -1, -1), past[1].expand(2, -1, -1, -1))
    got, (k2, v2) = layer(two, two.flip(-1), rows, past2, masks)
    assert torch.allclose(got[:1], want, atol=1e-6) and torch.allclose(k2[:1], k)
    assert torch.allclose(v2[:1], v)
    alone, _ = layer(two[1:], two[1:].flip(-1), pos + 4, past, mask.flip(0))
    assert torch.allclose(got[1:], alone, atol=1e-6)
    calls = []
    counting(layer.fc, calls)
    alone, batched = run_rounds(m, lambda: EagleDrafter(m, layer, depth=3, width=2), GREEDY)
    assert 4 in calls  # the batch ran as one
    for a, b in zip(alone, batched):
        assert torch.allclose(a.past[0], b.past[0], atol=1e-5)


@torch.no_grad()
def test_draft_model_batch_equals_per_request_drafts_with_partial_acceptance():
    target, small = model(), model(layers=1, seed=3)
    calls = []
    counting(small.model.embed_tokens, calls)
    accept = lambda r, i, n: (r + i) % (n + 1) if n else 0  # noqa: E731
    for sampling in (GREEDY, SAMPLED):
        calls.clear()
        alone, batched = run_rounds(target, lambda: ModelDrafter(small), sampling, False, accept)
        assert 4 in calls
        for a, b in zip(alone, batched):
            assert a.cached_ids == b.cached_ids and a.num_forwards == b.num_forwards
            n = a.cache.length
            assert n == b.cache.length
            assert torch.allclose(a.cache.keys[0][:, :, :n], b.cache.keys[0][:, :, :n], atol=1e-5)


@torch.no_grad()
def test_other_and_windowed_drafters_propose_alone():
    """Medusa drafters, a group of one, and MTP blocks with a sliding window (whose slot
    distances the padded layout would break) each go through their own ``propose``."""
    m = model(mtp=2)
    torch.manual_seed(2)
    windowed = CausalLM(ModelConfig(**{**m.config.to_dict(), "sliding_window": 3})).eval()
    assert batch_key(MTPDrafter(windowed)) is None and batch_key(MTPDrafter(m)) is not None
    heads = MedusaHeads(32, 40, 2, lm_head=m.lm_head)
    make = [lambda: MedusaDrafter(heads), lambda: MTPDrafter(m), lambda: MedusaDrafter(heads),
            lambda: MTPDrafter(windowed), lambda: MTPDrafter(windowed)]  # fmt: skip
    drafters, twins = [f() for f in make], [f() for f in make]
    hidden = [m.model(SEQS[0][None])[0][:9], windowed.model(SEQS[0][None])[0][:9]]
    for i in range(5):
        for d in (drafters[i], twins[i]):
            d.observe(hidden[i >= 3], 0)
    ks = [2, 2, 1, 2, 1]
    got = propose_batch(drafters, [SEQS[0][:10]] * 5, ks, [GREEDY] * 5, [None] * 5)
    assert [g.num_nodes for g in got] == [2, 2, 1, 2, 1]
    for g, twin, k in zip(got, twins, ks):
        want = twin.propose(SEQS[0][:10], k, GREEDY, None)
        assert torch.equal(g.tokens, want.tokens) and g.parents == want.parents
