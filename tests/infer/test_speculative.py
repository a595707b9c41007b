"""Speculative decoding: the acceptance/residual maths exactly, greedy output identical to
target-only greedy decoding, sampled output distributed as target-only sampling (chi-square
against the target's exact distribution, with a power check), statistics and KV rollback."""

from __future__ import annotations

import pytest
import torch

from lmforge import CausalLM, ModelConfig
from lmforge.infer import SamplingParams, generate
from lmforge.infer.sampling import processed_probs
from lmforge.infer.speculative import (
    Draft,
    Drafter,
    DraftLengthSchedule,
    ModelDrafter,
    residual_distribution,
    speculative_generate,
    verify_greedy,
    verify_sampled,
)
from lmforge.models.kv_cache import KVCache

VOCAB = 61


def tiny_lm(seed: int, vocab: int = VOCAB, hidden: int = 32, layers: int = 2, std=0.3):
    """A random tiny LM; a large init std gives peaked, far-from-uniform distributions."""
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=std,
    )
    return CausalLM(config).eval()


def perturbed(model: CausalLM, noise: float, seed: int = 7) -> CausalLM:
    """A copy of ``model`` with Gaussian noise on every weight: a draft that mostly agrees."""
    copy = CausalLM(model.config).eval()
    copy.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
    return copy


@pytest.fixture(scope="module")
def target():
    return tiny_lm(0)


def prompt(n: int = 5, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


class ScriptedDrafter:
    """A model-free drafter (exercises the `Drafter` protocol): proposes a fixed token, or a
    fixed distribution to sample from."""

    def __init__(self, token: int | None = None, probs: torch.Tensor | None = None) -> None:
        self.token, self.q = token, probs
        self.feedbacks: list[int] = []

    def propose(self, context, k, sampling, generator) -> Draft:
        if self.q is None:
            return Draft(torch.full((k,), self.token, dtype=torch.long))
        tokens = torch.multinomial(self.q, k, replacement=True, generator=generator)
        return Draft(tokens, self.q.expand(k, -1))

    def feedback(self, num_accepted: int) -> None:
        self.feedbacks.append(num_accepted)


# ---------------------------------------------------------------------- pure maths
def random_pair(vocab: int, seed: int, zeros: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random distributions (float64); ``zeros`` tokens filtered out of each (as top-k /
    top-p do), in different places."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(vocab, generator=g, dtype=torch.float64) ** 3
    q = torch.rand(vocab, generator=g, dtype=torch.float64)
    if zeros:
        p[:zeros], q[-zeros:] = 0, 0
    return p / p.sum(), q / q.sum()


@pytest.mark.parametrize("seed,zeros", [(0, 0), (1, 0), (2, 3), (3, 5)])
def test_acceptance_and_residual_reproduce_p_exactly(seed, zeros):
    """Σ_x q(x)·min(1, p(x)/q(x))·[x] + P(reject)·residual = p (Leviathan et al. Thm 3.5)."""
    p, q = random_pair(12, seed, zeros)
    accept = torch.where(q > 0, (p / q).clamp(max=1), torch.zeros_like(q))
    reject_mass = 1 - (q * accept).sum()
    marginal = q * accept + reject_mass * residual_distribution(p, q)
    torch.testing.assert_close(marginal, p, rtol=0, atol=1e-12)
    # ... and the wrong residual (p itself, i.e. plain rejection sampling) does not:
    assert (q * accept + reject_mass * p - p).abs().max() > 1e-3


def test_residual_distribution_edge_cases():
    p = torch.tensor([0.5, 0.3, 0.2])
    torch.testing.assert_close(residual_distribution(p, p), p)  # no mass: falls back to p
    r = residual_distribution(p, torch.tensor([0.1, 0.6, 0.3]))
    torch.testing.assert_close(r, torch.tensor([1.0, 0.0, 0.0]))
    batch = residual_distribution(
        torch.stack([p, p]), torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.3, 0.2]])
    )
    torch.testing.assert_close(batch, torch.stack([torch.tensor([1.0, 0.0, 0.0]), p]))


def test_verify_sampled_one_draft_matches_p_and_acceptance():
    """Monte Carlo of one accept/resample step: emitted-token frequencies match p, and the
    acceptance frequency matches Σ min(p, q)."""
    p, q = (d.float() for d in random_pair(6, seed=4, zeros=1))
    p_next = torch.full((6,), 1 / 6)
    g = torch.Generator().manual_seed(0)
    n_trials, counts, accepted = 6000, torch.zeros(6), 0
    draws = torch.multinomial(q, n_trials, replacement=True, generator=g)
    for x in draws:
        n, token = verify_sampled(torch.stack([p, p_next]), q[None], x[None], g)
        if n == 1:
            counts[x] += 1  # accepted draft is the first emitted token
        else:
            counts[token] += 1
        accepted += n
    assert_matches(counts, p, n_trials)
    assert abs(accepted / n_trials - torch.minimum(p, q).sum().item()) < 0.025


def test_verify_greedy():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert verify_greedy(logits, torch.tensor([1, 0])) == (2, 2)  # all accepted + bonus
    assert verify_greedy(logits, torch.tensor([1, 2])) == (1, 0)  # second rejected → argmax
    assert verify_greedy(logits, torch.tensor([0, 0])) == (0, 1)
    assert verify_greedy(logits[:1], torch.tensor([], dtype=torch.long)) == (0, 1)


def test_draft_length_schedule():
    s = DraftLengthSchedule(initial=2, minimum=1, maximum=3)
    assert [s.next(2, 2, 2), s.next(3, 3, 3), s.next(2, 2, 0), s.next(1, 1, 0)] == [3, 3, 1, 1]
    assert DraftLengthSchedule(2, 1, 3, adaptive=False).next(2, 2, 2) == 2
    with pytest.raises(ValueError, match="minimum ≤ initial ≤ maximum"):
        DraftLengthSchedule(initial=5, maximum=4)


# ---------------------------------------------------------------------- greedy = target greedy
@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("draft_kind", ["same", "close", "random"])
def test_greedy_identical_to_target_greedy(target, k, draft_kind):
    draft = {
        "same": lambda: target,
        "close": lambda: perturbed(target, 0.15),
        "random": lambda: tiny_lm(1, hidden=16, layers=1),
    }[draft_kind]()
    ids = prompt(6, seed=k)
    expected = generate(target, ids, max_new_tokens=40, do_sample=False)
    out = speculative_generate(target, draft, ids, 40, num_draft_tokens=k)
    assert torch.equal(out.sequences, expected)
    assert out.num_new_tokens == 40
    assert out.num_drafted == sum(out.draft_lengths)
    if draft_kind == "same":
        assert out.acceptance_rate == 1.0
        assert out.num_rounds < 40 / 2  # ≥ 2 tokens per target forward
    elif draft_kind == "random":
        assert out.acceptance_rate < 0.3  # the draft disagrees a lot and still changes nothing


def test_greedy_stops_at_eos_like_generate(target):
    ids = prompt(4, seed=3)
    reference = generate(target, ids, max_new_tokens=30, do_sample=False)[0, 4:].tolist()
    eos = reference[7]  # a token greedy decoding emits: generation must stop at its first use
    expected = generate(target, ids, max_new_tokens=30, do_sample=False, eos_token_id=eos)
    out = speculative_generate(target, target, ids, 30, num_draft_tokens=4, eos_token_id=eos)
    assert torch.equal(out.sequences, expected[:, : out.sequences.shape[1]])
    assert out.sequences[0, -1] == eos and out.num_new_tokens == reference.index(eos) + 1


def test_max_new_tokens_respected_and_plain_decoding(target):
    ids = prompt(3)
    for new in (0, 1, 2, 7):
        out = speculative_generate(target, target, ids, new, num_draft_tokens=5)
        assert out.num_new_tokens == new and out.sequences.shape == (1, 3 + new)
    plain = speculative_generate(target, None, ids, 12)
    assert torch.equal(plain.sequences, generate(target, ids, max_new_tokens=12))
    assert plain.num_rounds == 12 and plain.num_drafted == 0 and plain.tokens_per_round == 1.0


# ---------------------------------------------------------------------- sampling = target sampling
def first_two_distribution(target: CausalLM, ids: torch.Tensor, sampling: SamplingParams):
    """The target's exact processed joint distribution of the first two new tokens [V, V]."""

    def probs(logits: torch.Tensor) -> torch.Tensor:
        return processed_probs(logits, sampling.temperature, sampling.top_k, sampling.top_p)

    with torch.no_grad():
        p1 = probs(target(ids).logits[0, -1])
        extended = torch.cat(
            [
                ids.expand(target.config.vocab_size, -1),
                torch.arange(target.config.vocab_size)[:, None],
            ],
            dim=1,
        )
        p2 = probs(target(extended).logits[:, -1])
    return p1[:, None] * p2


def assert_matches(counts: torch.Tensor, probs: torch.Tensor, n: int, alpha: float = 1e-4):
    """Pearson chi-square goodness of fit (cells with expected count < 5 pooled): the
    p-value must exceed ``alpha``. With fixed seeds the outcome is deterministic."""
    counts, expected = counts.flatten().double(), probs.flatten().double() * n
    assert counts[expected == 0].sum() == 0, "a token with probability 0 was emitted"
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    p_value = torch.special.gammaincc(torch.tensor(dof / 2.0), stat / 2).item()
    assert p_value > alpha, f"chi2={stat.item():.1f} on {dof} dof, p={p_value:.2e}"


SMALL_VOCAB = 5
SETTINGS = {
    "plain": SamplingParams(),
    "processed": SamplingParams(temperature=0.7, top_k=5, top_p=0.9),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_sampling_preserves_target_distribution(setting):
    """First two tokens over many seeded runs (draft k=2 then the rest) vs the target's exact
    distribution; the same statistic rejects the draft's own distribution (power check)."""
    sampling = SETTINGS[setting]
    target = tiny_lm(10, vocab=SMALL_VOCAB, hidden=16, layers=1, std=0.5)
    draft = perturbed(target, 0.2)
    ids = prompt(3, seed=1, vocab=SMALL_VOCAB)
    runs, counts, accepted, drafted = 800, torch.zeros(SMALL_VOCAB, SMALL_VOCAB), 0, 0
    drafter = ModelDrafter(draft)  # reused across calls: exercises its prefix check
    for seed in range(runs):
        out = speculative_generate(
            target, drafter, ids, 3, num_draft_tokens=2, seed=seed,
            do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k,
            top_p=sampling.top_p,
        )  # fmt: skip
        a, b = out.sequences[0, 3:5].tolist()
        counts[a, b] += 1
        accepted, drafted = accepted + out.num_accepted, drafted + out.num_drafted
    assert_matches(counts, first_two_distribution(target, ids, sampling), runs)
    assert 0.1 < accepted / drafted < 0.9  # both paths (accept and resample) were exercised
    with pytest.raises(AssertionError, match="chi2|probability 0"):
        assert_matches(counts, first_two_distribution(draft, ids, sampling), runs)


def test_identical_draft_accepts_everything_when_sampling(target):
    out = speculative_generate(target, target, prompt(), 30, do_sample=True, seed=0)
    assert out.acceptance_rate == 1.0
    assert out.mean_accepted_length > 2 and out.tokens_per_round > 3


def test_seed_reproducible_and_generator(target):
    draft = perturbed(target, 0.2)
    kw = dict(do_sample=True, temperature=0.8)
    a = speculative_generate(target, draft, prompt(), 20, seed=5, **kw)
    b = speculative_generate(target, draft, prompt(), 20, seed=5, **kw)
    c = speculative_generate(
        target, draft, prompt(), 20, generator=torch.Generator().manual_seed(5), **kw
    )
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.sequences, c.sequences)
    assert a.draft_lengths == b.draft_lengths


# ---------------------------------------------------------------------- statistics, drafters
def test_statistics_with_a_scripted_drafter(target):
    ids = prompt(4)
    greedy = generate(target, ids, max_new_tokens=12)[0, 4:].tolist()
    never = next(t for t in range(VOCAB) if t not in greedy)
    wrong = ScriptedDrafter(token=never)
    assert isinstance(wrong, Drafter)
    out = speculative_generate(target, wrong, ids, 12, num_draft_tokens=3)
    assert out.sequences[0, 4:].tolist() == greedy
    assert out.num_accepted == 0 and out.acceptance_rate == 0.0
    assert out.draft_lengths == [3, 2] + [1] * 9 + [0]  # shrinks on rejection; last round k=0
    assert out.num_rounds == 12 and out.num_target_forwards == 13  # + the prompt prefill
    assert wrong.feedbacks == [0] * 11

    right = ScriptedDrafter(token=greedy[0])  # right once, then wrong
    out = speculative_generate(target, right, ids, 12, num_draft_tokens=3)
    assert out.num_accepted >= 1 and out.sequences[0, 4:].tolist() == greedy


def test_drafter_receives_sampling_params(target):
    """The drafter gets one `SamplingParams`: temperature 0 (greedy) unless ``do_sample``."""

    class Recording(ScriptedDrafter):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.seen: list[SamplingParams] = []

        def propose(self, context, k, sampling, generator) -> Draft:
            self.seen.append(sampling)
            return super().propose(context, k, sampling, generator)

    greedy = Recording(token=1)
    speculative_generate(target, greedy, prompt(), 4, temperature=0.5, top_k=3)
    assert greedy.seen and all(s.greedy and s.temperature == 0 for s in greedy.seen)
    sampled = Recording(probs=torch.full((VOCAB,), 1 / VOCAB))
    kw = dict(do_sample=True, temperature=0.5, top_k=3, top_p=0.8, seed=0)
    speculative_generate(target, sampled, prompt(), 4, **kw)
    s = sampled.seen[0]
    assert isinstance(s, SamplingParams) and not s.greedy
    assert (s.temperature, s.top_k, s.top_p, s.seed) == (0.5, 3, 0.8, 0)


def test_model_drafter_cache_rolls_back_exactly(target):
    draft = perturbed(target, 0.3)
    drafter = ModelDrafter(draft)
    context = prompt(5)[0]
    settings = SamplingParams(temperature=0)  # greedy drafting
    proposal = drafter.propose(context, 4, settings, None)
    assert len(drafter.cached_ids) == 5 + 3  # the last draft is never fed
    drafter.feedback(1)
    kept = context.tolist() + proposal.tokens[:1].tolist()
    assert drafter.cached_ids == kept and drafter.cache.length == 6
    fresh = KVCache.for_model(draft, 1, 16)
    with torch.no_grad():
        draft(torch.tensor([kept]), cache=fresh)
    for layer in range(draft.config.num_hidden_layers):
        torch.testing.assert_close(drafter.cache.keys[layer][:, :, :6], fresh.keys[layer][:, :, :6])
        torch.testing.assert_close(
            drafter.cache.values[layer][:, :, :6], fresh.values[layer][:, :, :6]
        )
    # The next proposal continues from the rolled-back cache as a fresh drafter would.
    nxt = torch.tensor(kept + [3])
    assert torch.equal(
        drafter.propose(nxt, 3, settings, None).tokens,
        ModelDrafter(draft).propose(nxt, 3, settings, None).tokens,
    )


def test_kv_cache_crop(target):
    ids = prompt(8)[0]
    cache = KVCache.for_model(target, 1, 16)
    with torch.no_grad():
        target(ids[None, :6], cache=cache)
        cache.crop(4)  # forget positions 4, 5; re-feed different tokens there
        tail = target(torch.tensor([[1, 2, 3]]), cache=cache).logits
        full = target(torch.cat([ids[:4], torch.tensor([1, 2, 3])])[None]).logits
    torch.testing.assert_close(tail, full[:, 4:], rtol=1e-5, atol=1e-5)
    assert cache.length == 7
    for bad in (8, -1, 2.0):
        with pytest.raises(ValueError, match="crop length"):
            cache.crop(bad)


# ---------------------------------------------------------------------- errors
def test_invalid_inputs(target):
    with pytest.raises(ValueError, match="batch size 1"):
        speculative_generate(target, target, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        speculative_generate(target, tiny_lm(1, vocab=50), prompt())
    with pytest.raises(ValueError, match="max_position_embeddings"):
        speculative_generate(target, target, prompt(), 200)
    with pytest.raises(ValueError, match="top_p"):
        speculative_generate(target, target, prompt(), do_sample=True, top_p=0.0)
    with pytest.raises(ValueError, match="num_draft_tokens"):
        speculative_generate(target, target, prompt(), num_draft_tokens=-1)
    with pytest.raises(TypeError, match="Drafter"):
        speculative_generate(target, object(), prompt())
    bad = ScriptedDrafter(token=1)
    with pytest.raises(ValueError, match="probs"):
        speculative_generate(target, bad, prompt(), 5, do_sample=True, seed=0)


# ---------------------------------------------------------------------- self-drafters
def mtp_lm(vocab: int = VOCAB, hidden: int = 32, std: float = 0.3) -> CausalLM:
    torch.manual_seed(4)
    config = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, initializer_range=std,
                         num_nextn_predict_layers=2)  # fmt: skip
    return CausalLM(config).eval()


def self_drafters(model: CausalLM) -> dict:
    from lmforge.infer.self_drafters import EagleDrafter, MedusaDrafter, MTPDrafter
    from lmforge.models.eagle import EagleLayer
    from lmforge.models.medusa import MedusaHeads

    c = model.config
    torch.manual_seed(5)
    heads = MedusaHeads(c.hidden_size, c.vocab_size, 3, lm_head=model.lm_head)
    with torch.no_grad():  # untrained heads copy the LM head: perturb them
        for p in heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    layer = EagleLayer.for_model(c).eval()
    return {
        "mtp": lambda: MTPDrafter(model),
        "medusa_tree": lambda: MedusaDrafter(heads, width=2),
        "eagle_tree": lambda: EagleDrafter(model, layer, depth=3, width=2),
    }


@pytest.mark.parametrize("method", ["mtp", "medusa_tree", "eagle_tree"])
def test_self_drafters_greedy_identical_to_target_greedy(method):
    model = mtp_lm()
    ids = prompt(6, seed=2)
    expected = generate(model, ids, max_new_tokens=30, do_sample=False)
    out = speculative_generate(model, self_drafters(model)[method](), ids, 30, num_draft_tokens=3)
    assert torch.equal(out.sequences, expected)
    # a draft every round but the last (k = 0): `observe` kept the drafter in step
    assert all(0 < n <= 3 for n in out.draft_lengths[:-1])  # trees cut to a chain of ≤ k
    if method == "medusa_tree":  # heads close to the LM head
        assert out.num_accepted > 0
    one = speculative_generate(model, self_drafters(model)[method](), ids[:, :1], 12)
    assert torch.equal(one.sequences, generate(model, ids[:, :1], max_new_tokens=12))


def test_first_path_of_a_tree():
    from lmforge.infer.speculative import first_path

    tree = Draft(torch.tensor([10, 11, 12, 13, 14]), None, [-1, -1, 1, 0, 3])
    assert first_path(tree).tokens.tolist() == [10, 13, 14] and first_path(tree).parents is None


@pytest.mark.parametrize("method", [pytest.param("mtp", marks=pytest.mark.slow), "medusa_tree"])
def test_self_drafters_sampling_preserves_target_distribution(method):
    """MTP drafts carry their distributions (rejection sampling); Medusa's top-k drafts are
    deterministic (draw from the target and follow): both reproduce the target's joint
    distribution of the first two tokens."""
    sampling = SETTINGS["processed"]
    model = mtp_lm(vocab=SMALL_VOCAB, hidden=16, std=0.5)
    ids = prompt(3, seed=1, vocab=SMALL_VOCAB)
    runs, counts, accepted, drafted = 400, torch.zeros(SMALL_VOCAB, SMALL_VOCAB), 0, 0
    factory = self_drafters(model)[method]
    for seed in range(runs):
        out = speculative_generate(
            model, factory(), ids, 3, num_draft_tokens=2, seed=seed, do_sample=True,
            temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
        )  # fmt: skip
        a, b = out.sequences[0, 3:5].tolist()
        counts[a, b] += 1
        accepted, drafted = accepted + out.num_accepted, drafted + out.num_drafted
    assert_matches(counts, first_two_distribution(model, ids, sampling), runs)
    assert 0.05 < accepted / drafted < 0.95
