"""`generate`: token-for-token parity with `transformers`' ``generate`` on every family,
plus end-of-sequence / padding conventions, seeding and input validation."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge import CausalLM, ModelConfig
from lmforge.infer import generate, sample_next_token

FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]
PAD = 0  # prompts draw their tokens from 1..vocab-1, so 0 only ever marks padding
LENGTHS = [5, 2, 7]  # prompt lengths of the left-padded test batch
NEW = 12


# ---------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: handing ops to a second thread costs more than the maths, and
    on a busy 2-core machine it made this file ~8x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_pair(hf_model_factory, tmp_path):
    """``make_pair(model_type, **config) -> (hf_model, lmforge_model)`` with equal weights."""

    def make(model_type: str, **overrides):
        specials = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
        hf = hf_model_factory(model_type, seed=1, std=0.3, **{**specials, **overrides})
        folder = tmp_path / model_type
        hf.save_pretrained(folder)
        return hf, lmforge.load_model(folder)

    return make


def left_padded(lengths=LENGTHS, vocab_size=97, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of the given lengths, left-padded with `PAD`; returns (ids, mask)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(1, vocab_size, (n,), generator=g)
        mask[row, width - n :] = 1
    return ids, mask


def hf_greedy(hf, ids, mask, max_new_tokens=NEW, **kwargs) -> torch.Tensor:
    kwargs.setdefault("pad_token_id", PAD)
    return hf.generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens, **kwargs
    )


def midway_tokens(new_tokens: torch.Tensor) -> list[tuple[int, int]]:
    """(token, row) pairs where ``row`` first emits ``token`` mid-generation and some other
    row never emits it: as an eos id it ends some rows but not all."""
    rows = new_tokens.tolist()
    found = []
    for r, row in enumerate(rows):
        for step in range(1, len(row) - 2):
            tok = row[step]
            fresh = tok not in row[:step] and all(tok != t for t, _ in found)
            if fresh and any(tok not in other for other in rows):
                found.append((tok, r))
    return found


def eos_ids_for(hf, ids, mask) -> tuple[int, list[int]]:
    """An eos id that fires midway, and a list of two that fire in different rows."""
    plain = hf_greedy(hf, ids, mask)[:, ids.shape[1] :]
    found = midway_tokens(plain)
    assert found, f"no usable eos token in greedy output {plain.tolist()}"
    first, row = found[0]
    other = next((t for t, r in found if r != row), None)
    unused = next(t for t in range(1, 97) if not bool((plain == t).any()))
    return first, [unused if other is None else other, first]


# ---------------------------------------------------------------------- HF parity
@pytest.mark.parametrize("model_type", FAMILIES)
def test_greedy_matches_hf_on_left_padded_batch(make_pair, model_type):
    hf, ours = make_pair(model_type)
    ids, mask = left_padded()
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW)
    assert out.shape == (3, ids.shape[1] + NEW) and out.dtype == torch.long
    assert torch.equal(out[:, : ids.shape[1]], ids)
    assert torch.equal(out, hf_greedy(hf, ids, mask))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_eos_ends_rows_like_hf(make_pair, model_type):
    hf, ours = make_pair(model_type)
    ids, mask = left_padded()
    eos, eos_list = eos_ids_for(hf, ids, mask)
    for eos_token_id in (eos, eos_list):
        kw = dict(eos_token_id=eos_token_id, pad_token_id=PAD)
        out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW, **kw)
        assert torch.equal(out, hf_greedy(hf, ids, mask, **kw))
        _assert_pad_after_eos(out[:, ids.shape[1] :], eos_token_id, PAD)


def _assert_pad_after_eos(new: torch.Tensor, eos, pad: int) -> None:
    eos_set = {eos} if isinstance(eos, int) else set(eos)
    finished = 0
    for row in new.tolist():
        hits = [i for i, t in enumerate(row) if t in eos_set]
        if hits:
            finished += 1
            assert all(t == pad for t in row[hits[0] + 1 :]), row
    assert finished > 0, "eos should end at least one row"
    if isinstance(eos, int):
        assert finished < new.shape[0], "this eos should leave at least one row running"


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_stops_when_every_row_has_finished(make_pair, model_type):
    hf, ours = make_pair(model_type)
    ids, mask = left_padded()
    plain = hf_greedy(hf, ids, mask)[:, ids.shape[1] :]
    eos = sorted(set(plain[:, 2].tolist()))  # every row emits one of these at step 2
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos)
    assert out.shape[1] <= ids.shape[1] + 3
    assert torch.equal(out, hf_greedy(hf, ids, mask, eos_token_id=eos, pad_token_id=eos[0]))


@pytest.mark.parametrize("model_type", ["qwen2", "mistral"])
def test_special_tokens_default_to_model_config_like_hf(make_pair, model_type):
    hf, _ = make_pair(model_type)
    ids, mask = left_padded()
    eos, _ = eos_ids_for(hf, ids, mask)
    # Same weights (same seed), special tokens now in config.json.
    hf, ours = make_pair(model_type, eos_token_id=eos, pad_token_id=PAD + 1)
    assert ours.config.eos_token_id == eos
    expected = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW)
    assert torch.equal(generate(ours, ids, attention_mask=mask, max_new_tokens=NEW), expected)
    assert bool((expected == PAD + 1).any()), "finished rows are padded with the config's pad"


def test_generation_config_eos_takes_precedence_like_hf(make_pair, tmp_path):
    """Instruct checkpoints list their turn-end token only in generation_config.json."""
    import json

    hf, _ = make_pair("llama")
    ids, mask = left_padded()
    eos, _ = eos_ids_for(hf, ids, mask)
    hf, _ = make_pair("llama", eos_token_id=PAD + 2)  # config.json's eos never fires
    hf.generation_config.eos_token_id = [eos, PAD + 2]
    hf.generation_config.pad_token_id = PAD
    hf.save_pretrained(tmp_path / "gc")
    assert json.loads((tmp_path / "gc" / "generation_config.json").read_text())["eos_token_id"]
    ours = lmforge.load_model(tmp_path / "gc")
    expected = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW)
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(out, expected) and bool((out[:, ids.shape[1] :] == eos).any())
    # save_model keeps those defaults.
    lmforge.save_model(ours, tmp_path / "again")
    again = json.loads((tmp_path / "again" / "generation_config.json").read_text())
    assert again["eos_token_id"] == [eos, PAD + 2]


def test_pad_falls_back_to_first_eos_like_hf(make_pair):
    hf, ours = make_pair("llama")
    ids, mask = left_padded()
    _, eos_list = eos_ids_for(hf, ids, mask)
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos_list)
    ref = hf.generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, eos_token_id=eos_list
    )
    assert torch.equal(out, ref)


def test_sliding_window_decoding_matches_hf(make_pair):
    hf, ours = make_pair("mistral", sliding_window=4)
    ids, mask = left_padded()
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(out, hf_greedy(hf, ids, mask))


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_sampling_matches_hf_under_the_same_global_seed(make_pair, model_type):
    """Same filters in the same order and one multinomial draw per step, like HF: with the
    same global RNG state the sampled tokens are identical."""
    hf, ours = make_pair(model_type)
    ids, mask = left_padded()
    kw = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=NEW)
    torch.manual_seed(7)
    out = generate(ours, ids, attention_mask=mask, pad_token_id=PAD, **kw)
    torch.manual_seed(7)
    assert torch.equal(out, hf.generate(ids, attention_mask=mask, pad_token_id=PAD, **kw))


# ---------------------------------------------------------------------- conventions
def test_batch_rows_equal_unpadded_single_prompts(make_pair):
    _, ours = make_pair("qwen2")
    ids, mask = left_padded()
    batched = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW)
    for row, n in enumerate(LENGTHS):
        alone = generate(ours, ids[row : row + 1, -n:], max_new_tokens=NEW)
        assert torch.equal(alone[0, -NEW:], batched[row, -NEW:])


def test_mask_is_inferred_from_pad_tokens_like_hf(make_pair):
    _, ours = make_pair("llama")
    ids, mask = left_padded()
    explicit = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(generate(ours, ids, max_new_tokens=NEW, pad_token_id=PAD), explicit)
    # A pad id that is also an eos id may be a real token: the mask is then all ones.
    ones = generate(ours, ids, attention_mask=torch.ones_like(ids), max_new_tokens=4)
    inferred = generate(ours, ids, max_new_tokens=4, pad_token_id=PAD, eos_token_id=PAD)
    assert torch.equal(inferred, ones)


def test_max_new_tokens_zero_returns_the_prompt(make_pair):
    _, ours = make_pair("llama")
    ids, mask = left_padded()
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=0)
    assert torch.equal(out, ids) and out.data_ptr() != ids.data_ptr()


def test_accepts_int32_ids_and_bool_mask(make_pair):
    _, ours = make_pair("llama")
    ids, mask = left_padded()
    expected = generate(ours, ids, attention_mask=mask, max_new_tokens=4)
    out = generate(ours, ids.int(), attention_mask=mask.bool(), max_new_tokens=4)
    assert out.dtype == torch.long and torch.equal(out, expected)


def test_package_level_generate(make_pair):
    """``lmforge.generate`` (which replaced the ``CausalLM.generate`` method: models never
    import infer) is this `generate`."""
    _, ours = make_pair("qwen3")
    ids, mask = left_padded()
    assert isinstance(ours, CausalLM) and not hasattr(ours, "generate")
    out = lmforge.generate(ours, ids, attention_mask=mask, max_new_tokens=5, eos_token_id=[3, 4])
    assert torch.equal(
        out, generate(ours, ids, attention_mask=mask, max_new_tokens=5, eos_token_id=[3, 4])
    )


def test_restores_module_modes_and_returns_an_ordinary_tensor(make_pair):
    _, ours = make_pair("llama")
    ids, mask = left_padded()
    ours.train()
    ours.model.layers[0].eval()
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=3)
    assert ours.training and ours.model.layers[1].training and not ours.model.layers[0].training
    assert not out.is_inference()
    loss = ours(out, labels=out).loss  # usable in a forward that needs gradients
    loss.backward()


# ---------------------------------------------------------------------- sampling
def test_seed_reproducible_and_leaves_global_rng_alone(make_pair):
    _, ours = make_pair("mistral")
    ids, mask = left_padded()
    kw = dict(attention_mask=mask, max_new_tokens=NEW, do_sample=True, temperature=1.5)
    state = torch.get_rng_state()
    a = generate(ours, ids, seed=11, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, generate(ours, ids, seed=11, **kw))
    assert torch.equal(a, generate(ours, ids, generator=torch.Generator().manual_seed(11), **kw))
    assert not torch.equal(a, generate(ours, ids, seed=12, **kw))


def test_degenerate_sampling_is_greedy(make_pair):
    _, ours = make_pair("qwen2")
    ids, mask = left_padded()
    greedy = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW)
    kw = dict(attention_mask=mask, max_new_tokens=NEW, do_sample=True, seed=0)
    assert torch.equal(generate(ours, ids, top_k=1, temperature=2.0, **kw), greedy)
    assert torch.equal(generate(ours, ids, temperature=0.0, **kw), greedy)
    assert torch.equal(generate(ours, ids, top_p=1e-6, **kw), greedy)


def test_sampling_matches_an_uncached_reference_loop(make_pair):
    """The cached loop draws exactly what full recomputation + `sample_next_token` draws."""
    _, ours = make_pair("qwen3")
    ids, mask = left_padded()
    kw = dict(do_sample=True, temperature=1.2, top_k=30, top_p=0.95)
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW, seed=5, **kw)
    g = torch.Generator().manual_seed(5)
    seq, seq_mask = ids, mask
    with torch.no_grad():
        for _ in range(NEW):
            logits = ours(seq, attention_mask=seq_mask).logits[:, -1].float()
            token = sample_next_token(logits, generator=g, **kw)
            seq = torch.cat([seq, token[:, None]], dim=1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(token[:, None])], dim=1)
    assert torch.equal(out, seq)


# ---------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    return CausalLM(cfg).eval()


IDS = torch.tensor([[0, 5, 6], [7, 8, 9]])
MASK = torch.tensor([[0, 1, 1], [1, 1, 1]])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(input_ids=IDS.float()), TypeError, "integer token ids"),
        (dict(input_ids=IDS.tolist()), TypeError, "torch.Tensor"),
        (dict(input_ids=IDS[0]), ValueError, "batch dimension"),
        (dict(input_ids=IDS[:, :0]), ValueError, "≥ 1 token"),
        (dict(input_ids=IDS + 45), ValueError, "outside"),
        (dict(attention_mask=MASK[:, 1:]), ValueError, "must match"),
        (dict(attention_mask=MASK * 2), ValueError, "only 0"),
        (dict(attention_mask=MASK.flip(1)), ValueError, "right padding in rows"),
        (dict(attention_mask=torch.tensor([[1, 0, 1], [1, 1, 1]])), ValueError, "gaps"),
        (dict(attention_mask=torch.tensor([[0, 0, 0], [1, 1, 1]])), ValueError, "all padding"),
        (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
        (dict(max_new_tokens=2.0), ValueError, "max_new_tokens"),
        (dict(max_new_tokens=14), ValueError, "max_new_tokens ≤ 13"),
        (dict(input_ids=torch.ones(1, 17, dtype=torch.long)), ValueError, "max_position"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_p=1.5), ValueError, "top_p"),
        (dict(top_k=-1), ValueError, "top_k"),
        (dict(temperature=-0.5), ValueError, "temperature"),
        (dict(eos_token_id=50), ValueError, "eos_token_id"),
        (dict(eos_token_id=[1, "2"]), ValueError, "eos_token_id"),
        (dict(eos_token_id="2"), ValueError, "eos_token_id"),
        (dict(pad_token_id=-1), ValueError, "pad_token_id"),
        (dict(seed=1, generator=torch.Generator()), ValueError, "not both"),
        (dict(seed=1.5), ValueError, "seed"),
    ],
)
def test_bad_arguments_raise_clear_errors(tiny, kwargs, error, match):
    call = dict(input_ids=IDS, max_new_tokens=2) | kwargs
    with pytest.raises(error, match=match):
        generate(tiny, **call)


def test_right_padding_without_mask_is_detected(tiny):
    ids = torch.tensor([[5, 6, 0], [7, 8, 9]])
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        generate(tiny, ids, pad_token_id=0, max_new_tokens=2)
