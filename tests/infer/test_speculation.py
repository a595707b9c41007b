"""Speculation inside the engine: greedy output identical to plain greedy for every drafter
(draft model, MTP, Medusa chain and tree, EAGLE tree, typical mode at temperature 0), the
sampled distribution equal to the target's for every exact method (chi-square, as
test_speculative.py), KV bookkeeping after a partially accepted tree (the paged cache equals
a dense forward of the committed tokens), per-request on/off, stop strings, prefix cache,
statistics, and the typical mode's skew (documented as not exact)."""

from __future__ import annotations

import pytest
import torch

from lmforge import CausalLM, ModelConfig
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.infer.self_drafters import EagleDrafter, MedusaBatch, MedusaDrafter, MTPDrafter
from lmforge.infer.speculation import SpeculationStats, SpeculativeConfig, verify_draft
from lmforge.infer.speculative import Draft, DraftLengthSchedule, ModelDrafter
from lmforge.models.eagle import EagleLayer
from lmforge.models.kv_cache import KVCache
from lmforge.models.medusa import MedusaHeads
from tests.infer.test_speculative import assert_matches, perturbed

VOCAB = 61


def tiny(seed=0, vocab=VOCAB, hidden=32, layers=2, std=0.3, mtp=3) -> CausalLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, initializer_range=std, num_nextn_predict_layers=mtp,
    )  # fmt: skip
    return CausalLM(cfg).eval()


@pytest.fixture(scope="module")
def target():
    return tiny()


def drafters(model: CausalLM, seed: int = 1) -> dict:
    torch.manual_seed(seed)
    heads = MedusaHeads(model.config.hidden_size, model.config.vocab_size, 3, lm_head=model.lm_head)
    with torch.no_grad():  # untrained heads would copy the LM head: perturb them
        for p in heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eagle = EagleLayer.for_model(model.config)
    small = perturbed(model, 0.3)
    batch = MedusaBatch(heads)  # the heads run once per step for every request
    return {
        "draft": lambda: ModelDrafter(small),
        "mtp": lambda: MTPDrafter(model),
        "medusa": lambda: MedusaDrafter(heads),
        "medusa_tree": lambda: MedusaDrafter(heads, width=2),
        "medusa_batched": lambda: MedusaDrafter(heads, width=2, batch=batch),
        "eagle_tree": lambda: EagleDrafter(model, eagle, depth=3, width=2),
    }


PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9] * 20, [3], list(range(10, 40))]
GREEDY = SamplingParams(max_tokens=14, temperature=0, ignore_eos=True)


def engine(model, factory, k=3, **kw) -> Engine:
    spec = SpeculativeConfig(factory, DraftLengthSchedule(k, 1, k))
    return Engine(model, block_size=4, speculative=spec, **kw)


@pytest.mark.parametrize(
    "method, fused",
    [("draft", True), ("mtp", True), ("medusa", True), ("medusa_tree", True),
     ("eagle_tree", True), ("medusa_tree", False), ("mtp", False), ("medusa_batched", True)],
)  # fmt: skip
def test_greedy_identical_to_plain_greedy(target, method, fused):
    plain = Engine(target, block_size=4, fused_weights=fused).generate(PROMPTS, GREEDY)
    eng = engine(target, drafters(target)[method], fused_weights=fused)
    out = eng.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in out] == [o.token_ids for o in plain]
    assert eng.spec_stats.rounds > 0
    typical = eng.generate(PROMPTS, SamplingParams(**{**vars(GREEDY), "acceptance": "typical"}))
    assert [o.token_ids for o in typical] == [o.token_ids for o in plain]


@pytest.mark.parametrize("fused", [True, False])
def test_sliding_window_greedy_identical_to_plain(fused):
    """A window of 6 that bites (prompts up to 30 tokens + 14 new): chains (draft model,
    MTP) and trees (Medusa, EAGLE) verified with depth-based positions inside the window."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.3, num_nextn_predict_layers=2, sliding_window=6,
    )  # fmt: skip
    model = CausalLM(cfg).eval()
    plain = Engine(model, block_size=4, fused_weights=fused).generate(PROMPTS, GREEDY)
    full = Engine(tiny(), block_size=4).generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in plain] != [o.token_ids for o in full]
    for method in ("draft", "mtp", "medusa_tree", "eagle_tree"):
        eng = engine(model, drafters(model)[method], fused_weights=fused)
        out = eng.generate(PROMPTS, GREEDY)
        assert [o.token_ids for o in out] == [o.token_ids for o in plain], method
        assert eng.spec_stats.rounds > 0


class OracleTree:
    """Knows the target's greedy continuation ``G``; proposes [wrong, G[L]] at depth 1, then
    G[L+1] and a wrong token under G[L]: the accepted path is nodes 1 → 2 (moved K/V)."""

    def __init__(self, full: list[int]) -> None:
        self.full = full

    def propose(self, context, k, sampling, generator) -> Draft:
        n = len(context)
        good = self.full[n : n + 2]
        if len(good) < 2 or k < 3:
            return Draft(context.new_empty(0))
        wrong = [(t + 1) % VOCAB for t in self.full[n : n + 3]]
        tokens = [wrong[0], good[0], good[1], wrong[2]]
        return Draft(torch.tensor(tokens), None, [-1, -1, 1, 2])

    def feedback(self, num_accepted: int) -> None:
        assert num_accepted == 2


@torch.no_grad()
def test_kv_bookkeeping_after_partial_tree_acceptance(target):
    prompt = [5, 6, 7, 8, 9, 10]
    params = SamplingParams(max_tokens=9, temperature=0, ignore_eos=True)
    plain = Engine(target, block_size=4).generate([prompt], params)[0].token_ids
    eng = engine(target, lambda: OracleTree(prompt + plain))
    rid = eng.add_request(prompt, params)
    req = eng.requests[rid]
    rounds = 0
    while eng.has_unfinished():
        eng.step()
        if req.finished or not req.num_computed:
            continue
        # every committed position's K/V in the paged cache equals a dense forward's
        n = req.num_computed
        dense = KVCache.for_model(target, 1, n)
        target(torch.tensor([req.tokens[:n]]), cache=dense)
        slots = [req.block_ids[p // 4] * 4 + p % 4 for p in range(n)]
        for layer in range(target.config.num_hidden_layers):
            paged = eng.cache.keys[layer][slots]  # [n, H_kv, D]
            torch.testing.assert_close(paged, dense.keys[layer][0].transpose(0, 1))
        rounds += 1
    assert req.output_ids == plain
    assert eng.spec_stats.acceptance_per_depth[:2] == [1.0, 1.0]
    assert eng.spec_stats.acceptance_per_depth[2] == 0.0
    assert eng.spec_stats.mean_accepted_length == 3.0


def test_per_request_off_stop_strings_and_prefix_cache(target):
    from tests.infer.test_engine import LetterTokenizer

    tok = LetterTokenizer()
    plain = Engine(target, tok, block_size=4).generate(PROMPTS, GREEDY)
    full = tok.decode(plain[4].token_ids)
    stop = full[5:10]
    eng = engine(target, drafters(target)["mtp"], tokenizer=tok)
    params = [GREEDY] * 4 + [SamplingParams(**{**vars(GREEDY), "stop": (stop,)})]
    out = eng.generate(PROMPTS, params)
    assert [o.token_ids for o in out[:4]] == [o.token_ids for o in plain[:4]]
    assert out[4].text == full[: full.index(stop)] and out[4].stop_reason == stop
    again = eng.generate(PROMPTS, GREEDY)  # prefix-cache hits: drafters start mid-sequence
    assert [o.token_ids for o in again] == [o.token_ids for o in plain]
    assert eng.stats()["prefix_cache_hit_tokens"] > 0
    rounds = eng.spec_stats.rounds
    off = SamplingParams(**{**vars(GREEDY), "speculative": False})
    assert [o.token_ids for o in eng.generate(PROMPTS, off)] == [o.token_ids for o in plain]
    assert eng.spec_stats.rounds == rounds  # nothing was drafted
    assert "spec_acceptance_per_depth" in eng.stats()


SMALL = 5


def first_three_distribution(model, ids, params) -> torch.Tensor:
    """The target's exact joint distribution of the first three tokens ``[V, V, V]``."""
    from lmforge.infer.speculation import target_probs

    with torch.no_grad():
        p1 = target_probs(model(torch.tensor([ids])).logits[0, -1], params)
        two = [ids + [a] for a in range(SMALL)]
        p2 = target_probs(model(torch.tensor(two)).logits[:, -1], params)
        three = [ids + [a, b] for a in range(SMALL) for b in range(SMALL)]
        p3 = target_probs(model(torch.tensor(three)).logits[:, -1], params)
    return p1[:, None, None] * p2[:, :, None] * p3.view(SMALL, SMALL, SMALL)


@pytest.mark.parametrize(
    "method",
    # the draft model's sampled chain is verified by the same rule as MTP's (and through
    # speculative_generate in test_speculative.py): slow here
    [pytest.param("draft", marks=pytest.mark.slow), "mtp", "medusa_tree", "eagle_tree"],
)
def test_sampling_preserves_target_distribution(method):
    """Tokens 2–3 are drafted at depths 1–2 (token 1 comes from the prefill): their joint
    with token 1 over seeded requests vs the target's exact distribution."""
    model = tiny(10, vocab=SMALL, hidden=16, layers=1, std=0.5, mtp=2)
    ids = [1, 3, 2]
    params = SamplingParams(max_tokens=4, temperature=0.8, top_k=4, ignore_eos=True)
    eng = engine(model, drafters(model)[method], k=2, max_num_seqs=128)
    runs = 300
    outs = eng.generate([ids] * runs, [SamplingParams(**{**vars(params), "seed": s})
                                       for s in range(runs)])  # fmt: skip
    counts = torch.zeros(SMALL, SMALL, SMALL)
    for o in outs:
        counts[tuple(o.token_ids[:3])] += 1
    assert_matches(counts, first_three_distribution(model, ids, params), runs)
    assert len(eng.spec_stats.reached) == 2  # drafts reached depth 2
    acc = eng.spec_stats.acceptance_per_depth[0]
    assert 0.05 < acc < 0.95  # accept and reject paths both exercised


def test_typical_acceptance_is_not_exact():
    """A drafter that always proposes token 0 and a flat-ish target: typical acceptance
    emits 0 far more often than the target would (documented as not exact)."""
    model = tiny(10, vocab=SMALL, hidden=16, layers=1, std=0.1, mtp=0)

    class Zeros:
        def propose(self, context, k, sampling, generator):
            return Draft(torch.zeros(1, dtype=torch.long))

        def feedback(self, n):
            pass

    ids = [1, 3, 2]
    params = SamplingParams(max_tokens=3, temperature=1.0, ignore_eos=True, acceptance="typical",
                            typical_epsilon=0.5, typical_delta=0.5)  # fmt: skip
    eng = engine(model, Zeros, k=1, max_num_seqs=128)
    outs = eng.generate([ids] * 300, [SamplingParams(**{**vars(params), "seed": s})
                                      for s in range(300)])  # fmt: skip
    second = torch.bincount(torch.tensor([o.token_ids[1] for o in outs]), minlength=SMALL)
    exact = first_three_distribution(model, ids, params).sum((0, 2))  # the drafted token's marginal
    assert second[0] / 300 > exact[0] + 0.3


def test_verify_draft_rules_and_stats():
    rows = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    greedy = SamplingParams(temperature=0)
    assert verify_draft(rows, Draft(torch.tensor([1, 2])), greedy, None) == ([0, 1], 0)
    assert verify_draft(rows, Draft(torch.tensor([1, 0])), greedy, None) == ([0], 2)
    tree = Draft(torch.tensor([0, 1, 2]), None, [-1, -1, 1])
    assert verify_draft(rows[[0, 0, 1, 2]], tree, greedy, None) == ([1, 2], 0)
    stats = SpeculationStats()
    stats.record(3, 3, 1)
    stats.record(2, 4, 2)
    assert stats.acceptance_per_depth == [1.0, 0.5, 0.0]
    assert stats.mean_accepted_length == 2.5


def test_preemption_and_token_budget_trim_drafts(target):
    """A tiny KV pool (preemption by recompute) and token budget (drafts cut short)."""
    plain = Engine(target, block_size=4).generate(PROMPTS, GREEDY)
    eng = engine(target, drafters(target)["eagle_tree"], num_blocks=14, max_num_batched_tokens=12)
    out = eng.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in out] == [o.token_ids for o in plain]
    assert eng.stats()["num_preemptions"] > 0


def test_mixed_batch_and_seeded_tree_sampling_equals_plain(target):
    """Eligible and ineligible requests (penalty, speculation off) share a batch; with
    deterministic candidates (a Medusa tree) exact verification draws each emitted token from
    the target with the request's own generator, one draw per token as plain sampling does —
    so a seeded sampled request (with logprobs) reproduces plain decoding token for token."""
    params = [
        GREEDY,
        SamplingParams(max_tokens=14, temperature=0, ignore_eos=True, repetition_penalty=1.3),
        SamplingParams(max_tokens=14, temperature=0.9, seed=3, ignore_eos=True, logprobs=2),
        SamplingParams(max_tokens=14, temperature=0, ignore_eos=True, speculative=False),
        SamplingParams(max_tokens=14, temperature=1.0, top_p=0.9, seed=5, ignore_eos=True),
    ]
    plain = Engine(target, block_size=4).generate(PROMPTS, params)
    eng = engine(target, drafters(target)["medusa_tree"])
    out = eng.generate(PROMPTS, params)
    assert [o.token_ids for o in out] == [o.token_ids for o in plain]
    assert [t.token_id for t in out[2].logprobs] == out[2].token_ids
    assert eng.spec_stats.rounds > 0
