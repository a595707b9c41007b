"""`Engine`: greedy parity with a contiguous-cache decode and with `transformers`, prefix
caching, preemption, chunked prefill, half-precision KV caches, seeds, penalties, logprobs,
stops, streaming, abort."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.models.kv_cache import KVCache

LENGTHS = [3, 17, 1, 9, 30, 6]
NEW = 10
GREEDY = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def pair(hf_model_factory, tmp_path_factory):
    """(hf_model, lmforge_model) with equal weights; no special tokens."""
    specials = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = hf_model_factory("llama", seed=3, std=0.3, **specials)
    folder = tmp_path_factory.mktemp("engine") / "llama"
    hf.save_pretrained(folder)
    return hf, lmforge.load_model(folder).eval()


def prompts(lengths=LENGTHS, seed=0, vocab=97) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def contiguous_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Reference: one prompt, lmforge's contiguous `KVCache`, argmax each step."""
    cache = KVCache.for_model(model, 1, len(prompt) + n)
    logits = model(torch.tensor([prompt]), cache=cache).logits[0, -1]
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = model(torch.tensor([[out[-1]]]), cache=cache).logits[0, -1]
    return out


@pytest.fixture(scope="module")
def reference(pair):
    _, ours = pair
    return [contiguous_greedy(ours, p, NEW) for p in prompts()]


def token_ids(outputs) -> list[list[int]]:
    return [o.token_ids for o in outputs]


# ---------------------------------------------------------------------- greedy parity
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(block_size=4),
        dict(block_size=1),
        dict(block_size=4, max_num_batched_tokens=7),  # chunked prefill
        dict(block_size=4, max_num_seqs=2),
    ],
)
def test_greedy_matches_contiguous_cache_and_hf(pair, reference, kwargs):
    hf, ours = pair
    outs = Engine(ours, **kwargs).generate(prompts(), GREEDY)
    assert token_ids(outs) == reference
    assert all(o.finished and o.finish_reason == "length" for o in outs)
    for p, ref in zip(prompts(), reference):
        hf_out = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=NEW)
        assert hf_out[0, len(p) :].tolist() == ref


def test_sliding_window_matches_hf(hf_model_factory, tmp_path):
    specials = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = hf_model_factory("mistral", seed=1, std=0.3, sliding_window=5, **specials)
    hf.save_pretrained(tmp_path / "m")
    ours = lmforge.load_model(tmp_path / "m").eval()
    outs = Engine(ours, block_size=4, max_num_batched_tokens=8).generate(prompts(), GREEDY)
    for p, o in zip(prompts(), outs):
        hf_out = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=NEW)
        assert o.token_ids == hf_out[0, len(p) :].tolist()


@pytest.mark.parametrize("kv_dtype", [torch.float16])
def test_half_precision_kv_cache(pair, reference, kv_dtype, monkeypatch):
    """``kv_cache_dtype``: a half-size cache beside the fp32 model (K/V rounded when written,
    widened when read) gives the fp32 cache's greedy tokens (this model's margins are above
    fp16's rounding; bf16's 8-bit mantissa flips one of its 60 tokens, so bf16 is checked
    at the attention's level, tests/infer/test_paged_attention.py) through every attention
    path — decode steps in place (the C++ op, the whole-step op), chunked prefill over
    cached context, and the gather + SDPA path without the op; the compiled step, which
    needs the model's dtype, is not used."""
    from lmforge.infer import cache as cache_module

    _, ours = pair
    for kwargs in (dict(), dict(block_size=4, max_num_batched_tokens=7)):
        engine = Engine(ours, kv_cache_dtype=kv_dtype, **kwargs)
        assert engine.cache.dtype == kv_dtype
        assert token_ids(engine.generate(prompts(), GREEDY)) == reference
    fp32, half = Engine(ours, num_blocks=8), Engine(ours, num_blocks=8, kv_cache_dtype=kv_dtype)
    assert half.cache.nbytes * 2 == fp32.cache.nbytes
    compiled = Engine(ours, kv_cache_dtype=kv_dtype, compile_decode="eager")
    assert token_ids(compiled.generate(prompts(), GREEDY)) == reference
    assert compiled.compiled is None
    with pytest.raises(ValueError, match="kv_cache_dtype=torch.int8 must be a floating"):
        Engine(ours, kv_cache_dtype=torch.int8)
    monkeypatch.setattr(cache_module, "paged_attention_supported", lambda *a: False)
    monkeypatch.setattr(cache_module, "paged_kv_supported", lambda *a: False)
    engine = Engine(ours, block_size=4, kv_cache_dtype=kv_dtype)
    assert token_ids(engine.generate(prompts(), GREEDY)) == reference


def test_prefix_cache_hits_give_identical_outputs(pair):
    _, ours = pair
    shared = prompts([20])[0]
    batch = [shared + tail for tail in prompts([3, 7, 1], seed=1)] + [shared[:9]]
    plain = Engine(ours, block_size=4, enable_prefix_caching=False).generate(batch, GREEDY)
    engine = Engine(ours, block_size=4)
    first = engine.generate(batch[:1], GREEDY)
    rest = engine.generate(batch[1:], GREEDY)
    assert token_ids(first + rest) == token_ids(plain)
    stats = engine.stats()
    # The second call reuses the first prompt's 5 full shared blocks (20 tokens) for the two
    # longer prompts and 2 blocks for the 9-token one (its last token is always computed).
    assert stats["prefix_cache_hit_tokens"] == 2 * 20 + 8
    again = engine.generate(batch, GREEDY)  # whole prompts cached now (but ≥ 1 recomputed)
    assert token_ids(again) == token_ids(plain)
    assert plain and Engine(ours, enable_prefix_caching=False).stats()["num_cached_blocks"] == 0


def test_preemption_by_recompute_gives_identical_outputs(pair, reference):
    _, ours = pair
    for caching in (True, False):
        engine = Engine(ours, block_size=4, num_blocks=11, enable_prefix_caching=caching)
        outs = engine.generate(prompts(), GREEDY)
        assert engine.stats()["num_preemptions"] > 0
        assert token_ids(outs) == reference
        assert engine.stats()["num_free_blocks"] == 11  # everything released


def test_step_interface_streams_every_token(pair, reference):
    _, ours = pair
    engine = Engine(ours, block_size=4, max_num_batched_tokens=16)
    ids = [engine.add_request(p, GREEDY) for p in prompts()]
    streamed = {i: [] for i in ids}
    finished = set()
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id not in finished
            streamed[out.request_id] += out.new_token_ids
            assert out.token_ids == streamed[out.request_id]
            if out.finished:
                finished.add(out.request_id)
    assert [streamed[i] for i in ids] == reference and finished == set(ids)


# ---------------------------------------------------------------------- sampling
@pytest.mark.parametrize("draw", ["multinomial", "inverse_cdf"])
def test_seed_gives_the_same_output_whatever_the_batch_mates(pair, draw):
    _, ours = pair
    params = SamplingParams(max_tokens=NEW, temperature=1.0, seed=7, ignore_eos=True)
    alone = Engine(ours, draw=draw).generate(prompts()[:1], params)[0].token_ids
    mates = [SamplingParams(max_tokens=n, temperature=1.3, ignore_eos=True) for n in (3, 12)]
    engine = Engine(ours, block_size=4, max_num_batched_tokens=12, draw=draw)
    engine.add_request(prompts()[4], mates[0])
    mixed = engine.generate(
        [prompts()[2], prompts()[0], prompts()[1]],
        [mates[1], params, SamplingParams(max_tokens=4, temperature=0.7, seed=1)],
    )
    assert mixed[1].token_ids == alone
    other = SamplingParams(max_tokens=NEW, temperature=1.0, seed=8, ignore_eos=True)
    assert Engine(ours, draw=draw).generate(prompts()[:1], other)[0].token_ids != alone


def test_draws_differ_in_stream_not_in_validity(pair):
    """The two exact draws give other seeded streams (so a seeded stream is pinned to one
    draw) and an unknown draw is refused."""
    _, ours = pair
    params = SamplingParams(max_tokens=NEW, temperature=1.0, seed=7, ignore_eos=True)
    a = Engine(ours).generate(prompts()[:2], params)
    b = Engine(ours, draw="inverse_cdf").generate(prompts()[:2], params)
    assert token_ids(a) != token_ids(b)
    with pytest.raises(ValueError, match="draw"):
        Engine(ours, draw="gumbel")


def test_generate_expands_n_prompt_major_with_seeds_s_plus_k(pair):
    """``n`` completions per prompt: outputs prompt-major; completion k of a prompt with seed
    s is exactly the request with seed s + k."""
    _, ours = pair
    kw = dict(max_tokens=6, temperature=1.0, ignore_eos=True)
    two = prompts()[:2]
    outs = Engine(ours).generate(two, SamplingParams(seed=5, n=3, **kw))
    assert len(outs) == 6 and len({o.request_id for o in outs}) == 6
    singles = [SamplingParams(seed=5 + k, **kw) for k in range(3)]
    for i, p in enumerate(two):
        group = outs[3 * i : 3 * i + 3]
        assert all(o.prompt_token_ids == p for o in group)
        assert token_ids(group) == token_ids(Engine(ours).generate([p] * 3, singles))
    assert len({tuple(o.token_ids) for o in outs[:3]}) > 1  # the completions differ
    mixed = Engine(ours).generate(two, [SamplingParams(seed=5, **kw), SamplingParams(n=2, **kw)])
    assert [o.prompt_token_ids for o in mixed] == [two[0], two[1], two[1]]
    assert mixed[0].token_ids == outs[0].token_ids  # n = 1: the params as given


def test_n_errors(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="add_request serves one completion, got n=2"):
        Engine(ours).add_request([1, 2], SamplingParams(n=2))
    with pytest.raises(ValueError, match="n=0 must be an integer"):
        Engine(ours).generate([[1, 2]], SamplingParams(n=0))
    with pytest.raises(ValueError, match="constraint"):
        Engine(ours).generate([[1, 2]], SamplingParams(n=2, constraint=ForceTokens([1])))


def test_repetition_penalty_greedy_matches_hf(pair):
    hf, ours = pair
    params = SamplingParams(max_tokens=NEW, temperature=0, repetition_penalty=1.8, ignore_eos=True)
    outs = Engine(ours).generate(prompts(), params)
    for p, o in zip(prompts(), outs):
        ref = hf.generate(
            torch.tensor([p]), do_sample=False, max_new_tokens=NEW, repetition_penalty=1.8
        )
        assert o.token_ids == ref[0, len(p) :].tolist()


def test_frequency_and_presence_penalties_reduce_repeats(pair):
    _, ours = pair
    base = Engine(ours).generate(prompts(), SamplingParams(max_tokens=30, temperature=0))
    params = SamplingParams(max_tokens=30, temperature=0, frequency_penalty=50.0)
    penalised = Engine(ours).generate(prompts(), params)
    assert any(len(set(o.token_ids)) < 30 for o in base), "greedy should repeat somewhere"
    assert all(len(set(o.token_ids)) == 30 for o in penalised)  # huge penalty: never repeat
    params = SamplingParams(max_tokens=30, temperature=0, presence_penalty=50.0)
    assert all(len(set(o.token_ids)) == 30 for o in Engine(ours).generate(prompts(), params))


def test_logprobs_are_log_softmax_of_the_model_logits(pair):
    _, ours = pair
    params = SamplingParams(max_tokens=6, temperature=0.9, seed=3, logprobs=4, ignore_eos=True)
    outs = Engine(ours, block_size=4).generate(prompts()[:3], params)
    for p, o in zip(prompts()[:3], outs):
        with torch.no_grad():
            logits = ours(torch.tensor([p + o.token_ids])).logits[0]
        expected = torch.log_softmax(logits[len(p) - 1 : -1].float(), dim=-1)
        assert [lp.token_id for lp in o.logprobs] == o.token_ids
        for i, lp in enumerate(o.logprobs):
            assert lp.logprob == pytest.approx(float(expected[i, lp.token_id]), abs=1e-4)
            top_v, top_i = expected[i].topk(4)
            assert [t for t, _ in lp.top] == top_i.tolist()
            assert [v for _, v in lp.top] == pytest.approx(top_v.tolist(), abs=1e-4)
    none = Engine(ours).generate(prompts()[:1], GREEDY)[0]
    assert none.logprobs is None


# ---------------------------------------------------------------------- stops
def test_eos_and_stop_token_ids_end_requests(pair, reference):
    _, ours = pair
    stop = reference[1][4]
    first = reference[1].index(stop)
    params = SamplingParams(max_tokens=NEW, temperature=0, stop_token_ids=(stop,))
    out = Engine(ours).generate([prompts()[1]], params)[0]
    assert out.token_ids == reference[1][:first]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    ours.generation_config = {"eos_token_id": [stop]}
    try:
        eos = Engine(ours).generate([prompts()[1]], SamplingParams(max_tokens=NEW, temperature=0))
        ignored = Engine(ours).generate([prompts()[1]], GREEDY)
    finally:
        ours.generation_config = {}
    assert eos[0].token_ids == reference[1][:first] and eos[0].finish_reason == "stop"
    assert ignored[0].token_ids == reference[1]


class LetterTokenizer:
    """Token i decodes to two letters, so stop strings can straddle tokens."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=False) -> str:
        return "".join(chr(97 + i % 26) + chr(97 + (i // 26) % 26) for i in ids)


class ByteTokenizer:
    """Token ids are UTF-8 bytes (ids 1, 2, 3 are the three bytes of '€')."""

    eos_token_id = None
    special = {1: 0xE2, 2: 0x82, 3: 0xAC}

    def decode(self, ids, skip_special_tokens=False) -> str:
        data = bytes(self.special.get(i, 97 + i % 26) for i in ids)
        return data.decode("utf-8", errors="replace")


class ForceTokens:
    """A `Constraint` that allows exactly one token sequence."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens, self.pos = tokens, 0

    def mask_logits(self, logits: torch.Tensor) -> None:
        keep = logits[self.tokens[self.pos]].clone()
        logits.fill_(float("-inf"))
        logits[self.tokens[self.pos]] = keep

    def accept(self, token_id: int) -> None:
        if token_id != self.tokens[self.pos]:
            raise ValueError(f"token {token_id} not allowed")
        self.pos += 1

    def is_finished(self) -> bool:
        return self.pos == len(self.tokens)


def stream(engine: Engine, prompt: list[int], params: SamplingParams):
    rid = engine.add_request(prompt, params)
    deltas, last = [], None
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == rid:
                deltas.append(out.new_text)
                last = out
    return deltas, last


def test_stop_strings_cut_text_and_never_leak_into_deltas(pair, reference):
    _, ours = pair
    tok = LetterTokenizer()
    full = tok.decode(reference[4])
    stop = full[7:12]  # starts mid-token, spans three tokens
    params = SamplingParams(max_tokens=NEW, temperature=0, stop=("zzzzzz", stop))
    deltas, out = stream(Engine(ours, tok), prompts()[4], params)
    cut = full.index(stop)
    assert out.text == full[:cut] and "".join(deltas) == out.text
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    assert out.token_ids == reference[4][: cut // 2]  # tokens wholly before the stop string
    assert all(stop[:3] not in d for d in deltas)


def test_partial_utf8_is_held_back_from_deltas(pair):
    _, ours = pair
    forced = [10, 1, 2, 3, 11, 1, 2, 3]
    params = SamplingParams(max_tokens=20, temperature=0, constraint=ForceTokens(forced))
    deltas, out = stream(Engine(ours, ByteTokenizer()), prompts()[0], params)
    assert out.token_ids == forced and out.finish_reason == "stop"
    assert out.text == "k€l€" and "".join(deltas) == out.text
    assert all("\ufffd" not in d for d in deltas)


class CountingByteTokenizer(ByteTokenizer):
    """Counts the ids it decodes, to check the engine does not re-decode whole outputs."""

    decoded = 0

    def decode(self, ids, skip_special_tokens=False) -> str:
        self.decoded += len(ids)
        return super().decode(ids, skip_special_tokens)


def test_incremental_text_equals_full_decode_at_every_step(pair):
    """Text is decoded incrementally (a window per token, not the whole output) and equals
    decoding every token so far, partial UTF-8 characters included."""
    _, ours = pair
    forced = [1, 2, 3, 4, 1, 2, 3, 1, 5, 2, 3, 6, 7, 1, 2, 3, 1, 2, 3] * 4  # '€' + broken bytes
    tok = CountingByteTokenizer()
    engine = Engine(ours, tok)
    params = SamplingParams(max_tokens=len(forced), temperature=0, constraint=ForceTokens(forced))
    engine.add_request(prompts()[0], params)
    while engine.has_unfinished():
        for out in engine.step():
            assert out.text == ByteTokenizer().decode(out.token_ids)
    assert out.text == ByteTokenizer().decode(forced) and out.text.count("€") == 16
    assert tok.decoded < 10 * len(forced)  # a full re-decode per token: ~n²/2 = 2888


def test_abort_reports_and_frees(pair, reference):
    _, ours = pair
    engine = Engine(ours, block_size=4)
    a = engine.add_request(prompts()[0], GREEDY)
    b = engine.add_request(prompts()[1], GREEDY)
    engine.step()
    engine.abort(a)
    engine.abort("no-such-request")  # ignored
    outs = {o.request_id: o for o in engine.step()}
    assert outs[a].finished and outs[a].finish_reason == "abort"
    rest = []
    while engine.has_unfinished():
        rest += [o for o in engine.step() if o.request_id == b]
    assert rest[-1].token_ids == reference[1]
    assert engine.stats()["num_free_blocks"] == engine.stats()["num_blocks"]


@pytest.mark.parametrize(
    "params, match",
    [
        (SamplingParams(max_tokens=0), "max_tokens"),
        (SamplingParams(temperature=-1), "temperature"),
        (SamplingParams(top_p=0), "top_p"),
        (SamplingParams(min_p=2), "min_p"),
        (SamplingParams(repetition_penalty=0), "repetition_penalty"),
        (SamplingParams(stop=("x",)), "tokenizer"),
        (SamplingParams(stop_token_ids=(1000,)), "stop_token_ids"),
        (SamplingParams(logprobs=-1), "logprobs"),
        (SamplingParams(max_tokens=500), "max_position_embeddings"),
        (SamplingParams(stop="###"), "must be tuples"),
        (SamplingParams(min_tokens=-1), "min_tokens"),
    ],
)
def test_bad_requests_raise_clear_errors(pair, params, match):
    _, ours = pair
    with pytest.raises(ValueError, match=match):
        Engine(ours).add_request([1, 2], params)


def test_bad_prompts_and_duplicate_ids_raise(pair):
    _, ours = pair
    engine = Engine(ours, block_size=4, num_blocks=4)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([], GREEDY)
    with pytest.raises(ValueError, match="outside"):
        engine.add_request([1, 97], GREEDY)
    with pytest.raises(ValueError, match="KV blocks"):
        engine.add_request([1] * 10, GREEDY)
    engine.add_request([1], GREEDY, request_id="x")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([1], GREEDY, request_id="x")


def test_generate_wrapper_min_new_tokens_matches_hf(pair, reference):
    """`generate` (greedy → engine) suppresses eos until min_new_tokens, as HF does."""
    from lmforge.infer import generate

    hf, ours = pair
    p = torch.tensor([prompts()[1]])
    eos = reference[1][1]
    kw = dict(max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
    for min_new in (0, 4):
        out = generate(ours, p, min_new_tokens=min_new, **kw)
        ref = hf.generate(p, do_sample=False, min_new_tokens=min_new, **kw)
        assert torch.equal(out, ref)


# ---------------------------------------------------------------------- MLA (DeepSeek-V3)
@torch.no_grad()
def test_mla_engine_caches_only_the_latent_and_matches_contiguous_decode():
    """A deepseek-tiny model (MLA + MoE): the engine's pool holds one latent per token and
    layer (no value blocks), and continuous batching, chunked prefill, prefix-cache hits and
    preemption give the contiguous-cache greedy tokens."""
    from lmforge.models.presets import preset_config

    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config("deepseek-tiny")).eval()
    for p in model.parameters():  # larger weights: distinct argmaxes, not one repeated token
        p.mul_(3)
    cfg = model.config
    latent = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    shared = prompts([13], seed=7)[0]
    batch = prompts([3, 17, 1, 9], seed=8) + [shared, shared + [40, 41, 42]]
    reference = [contiguous_greedy(model, p, NEW) for p in batch]
    assert len({t for ref in reference for t in ref}) > 5
    for kwargs in (dict(), dict(max_num_batched_tokens=8), dict(num_blocks=9)):
        engine = Engine(model, block_size=4, **kwargs)
        assert engine.cache.values == [] and engine.cache.key_only
        assert engine.cache.bytes_per_token == cfg.num_hidden_layers * latent * 4  # fp32
        first = engine.generate(batch[:5], GREEDY)
        second = engine.generate(batch[5:], GREEDY)  # after `shared` is cached
        assert token_ids(first + second) == reference, kwargs
        stats = engine.stats()
        assert stats["prefix_cache_hit_tokens"] >= 12
        if "num_blocks" in kwargs:
            assert stats["num_preemptions"] > 0


def test_refresh_weights_reaches_mla_absorbed_weights():
    """After an in-place update that leaves version counters alone (``p.data``, as torch's
    fused CPU AdamW writes), `Engine.refresh_weights` makes MLA's absorbed weights follow:
    the engine's logprobs are the full forward's (training form) again."""
    from lmforge.models.presets import preset_config

    torch.manual_seed(1)
    model = lmforge.CausalLM(preset_config("deepseek-tiny")).eval()
    prompt = [5, 9, 2, 7, 3]
    params = SamplingParams(max_tokens=4, temperature=0, logprobs=0, ignore_eos=True)

    def max_error(engine) -> float:
        (out,) = engine.generate([prompt], params)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out.token_ids])).logits[0]
        want = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
        got = [lp.logprob - float(want[i, lp.token_id]) for i, lp in enumerate(out.logprobs)]
        return max(abs(x) for x in got)

    engine = Engine(model, block_size=4)
    assert max_error(engine) < 1e-4
    kv_b = model.model.layers[0].self_attn.kv_b_proj.weight
    kv_b.data.add_(0.5 * torch.randn_like(kv_b))  # no version bump
    assert max_error(engine) > 1e-2  # the cached W_UK / W_UV are stale
    engine.refresh_weights()
    assert max_error(engine) < 1e-4


@pytest.mark.parametrize("draw", ["multinomial", "inverse_cdf"])
def test_batched_sampling_equals_row_by_row(pair, draw):
    """`Engine._sample` processes rows with equal plain params together; every row's token
    and generator state equal `_sample_row`'s (penalised / min_tokens rows take that path)."""
    _, model = pair
    engine = Engine(model, draw=draw)
    kinds = [
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=1.0, seed=2),
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, seed=3),
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, seed=4),
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.0, repetition_penalty=1.3, seed=5),
        SamplingParams(temperature=1.0, min_tokens=3, seed=6),
    ]
    ids = [engine.add_request([3, 4, 5], p) for p in kinds]
    reqs = [engine.requests[i] for i in ids]
    logits = torch.randn(
        len(reqs), model.config.vocab_size, generator=torch.Generator().manual_seed(0)
    )
    seeded = [r for r in reqs if r.generator is not None]  # the greedy one has none
    states = [r.generator.get_state() for r in seeded]
    batched = engine._sample(logits, reqs)
    after = [r.generator.get_state() for r in seeded]
    for r, s in zip(seeded, states):
        r.generator.set_state(s)
    rows = [engine._sample_row(logits[i], r) for i, r in enumerate(reqs)]
    assert batched == rows
    assert all(torch.equal(a, r.generator.get_state()) for a, r in zip(after, seeded))


# ---------------------------------------------------------------------- per-step host work
def test_decode_fast_path_builds_the_same_inputs_as_the_ragged_path(pair):
    """A pure decode step's inputs come from tensor ops over the batch (block tables by a
    masked scatter, KV slots by a gather); they equal the general per-chunk path's, with
    tables of different widths (padding) and a prompt's 1-token chunk short of its end."""
    _, ours = pair
    engine = Engine(ours, block_size=4, max_num_batched_tokens=64)
    for p in prompts([3, 17, 1, 9, 30]):
        engine.add_request(p, GREEDY)
    engine.step()  # prefill (budget 64: the 30-token prompt is cut short)
    engine.step()
    chunks = engine.scheduler.schedule()
    assert all(c.num_tokens == 1 for c in chunks)
    chunks.sort(key=lambda c: (c.num_tokens > 1, len(c.seq.block_ids)))
    assert len({len(c.seq.block_ids) for c in chunks}) > 1
    fast, ragged = engine._decode_inputs(chunks), engine._ragged_inputs(chunks)
    for name in ("ids", "positions", "keep"):
        assert torch.equal(getattr(fast, name), getattr(ragged, name)), name
    assert torch.equal(fast.table_padding, ragged.table_padding)
    fb, rb = fast.batch, ragged.batch
    assert torch.equal(fb.slot_mapping, rb.slot_mapping)
    assert torch.equal(fb.decode_blocks, rb.decode_blocks)
    assert torch.equal(fb.decode_positions, rb.decode_positions)
    assert fb.decode_groups == rb.decode_groups and fb.num_decode == rb.num_decode
    assert fast.sampling == ragged.sampling and fast.spans == ragged.spans
    assert fast.offsets == ragged.offsets and fast.max_position == ragged.max_position

    # Budget 2: a decode token and the first token of a 3-token prompt (no sampling).
    short = Engine(ours, block_size=4, max_num_batched_tokens=2)
    short.add_request([5], GREEDY)
    short.step()
    short.add_request([6, 7, 8], GREEDY)
    chunks = short.scheduler.schedule()
    assert [c.num_tokens for c in chunks] == [1, 1]
    fast, ragged = short._decode_inputs(chunks), short._ragged_inputs(chunks)
    assert fast.keep.tolist() == ragged.keep.tolist() == [0]
    assert fast.sampling == ragged.sampling == [chunks[0].seq]
    assert torch.equal(fast.batch.slot_mapping, ragged.batch.slot_mapping)


def test_batched_logprobs_equal_row_by_row(pair):
    """`Engine._token_logprobs` (one log-softmax, gather and top-k for the batch) gives each
    row `top_logprobs`' values; rows that ask for none get none."""
    from lmforge.infer.sampling import top_logprobs

    _, model = pair
    engine = Engine(model)
    kinds = [SamplingParams(logprobs=0), SamplingParams(), SamplingParams(logprobs=3),
             SamplingParams(logprobs=1)]  # fmt: skip
    reqs = [engine.requests[engine.add_request([3, 4], p)] for p in kinds]
    logits = torch.randn(4, model.config.vocab_size, generator=torch.Generator().manual_seed(2))
    tokens = [5, 6, 7, 8]
    out = engine._token_logprobs(logits, reqs, tokens, [10, 11, 12, 13])
    assert sorted(out) == [10, 12, 13]
    for j, key in ((0, 10), (2, 12), (3, 13)):
        lp, top = top_logprobs(logits[j], tokens[j], kinds[j].logprobs)
        got = out[key]
        assert got.token_id == tokens[j] and got.logprob == pytest.approx(lp, abs=1e-6)
        assert [i for i, _ in got.top] == [i for i, _ in top]
        assert [v for _, v in got.top] == pytest.approx([v for _, v in top], abs=1e-6)


def test_detokenize_false_decodes_the_text_once_when_finished(pair, reference):
    """``detokenize=False``: no text in the reports while running, the whole text in the last
    one and in `final_output` — equal to the streamed run's; stop strings keep streaming."""
    _, ours = pair
    tok = LetterTokenizer()
    lazy = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True, detokenize=False)
    deltas, last = stream(Engine(ours, tok), prompts()[4], lazy)
    full = tok.decode(reference[4])
    assert deltas[:-1] == [""] * (len(deltas) - 1) and deltas[-1] == full
    assert last.text == full and last.token_ids == reference[4]
    assert Engine(ours, tok).generate([prompts()[4]], lazy)[0].text == full
    stop = full[7:12]
    with_stop = SamplingParams(max_tokens=NEW, temperature=0, stop=(stop,), detokenize=False)
    _, out = stream(Engine(ours, tok), prompts()[4], with_stop)
    assert out.text == full[: full.index(stop)] and out.stop_reason == stop
    with pytest.raises(ValueError, match="detokenize"):
        SamplingParams(detokenize=1).validate(97, True)
