"""`beam_search`: token-for-token (and score) parity with `transformers`'
``generate(num_beams=…, do_sample=False)`` over a matrix of settings, with end-of-sequence
ids that really end hypotheses; plus defaults, edge cases and input validation."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

import lmforge
from lmforge.infer.beam import beam_search, beam_search_with_scores

PAD = 0  # prompts draw their tokens from 1..vocab-1, so 0 only ever marks padding
FILL = 5  # an explicit pad id for finished hypotheses (not 0: see test_pad_id_zero…)
LENGTHS = [5, 2, 7]  # prompt lengths of the left-padded test batch
NEW = 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: a second thread costs more than it saves. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def load_pair(hf_model_factory, folder, model_type="llama", **overrides):
    specials = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = hf_model_factory(model_type, seed=1, std=0.3, **{**specials, **overrides})
    hf.save_pretrained(folder)
    return hf, lmforge.load_model(folder)


@pytest.fixture(scope="module")
def pair(hf_model_factory, tmp_path_factory):
    """(hf_model, lmforge_model) with equal weights and no special tokens in the config."""
    return load_pair(hf_model_factory, tmp_path_factory.mktemp("beam") / "llama")


@pytest.fixture(scope="module")
def frequent(pair):
    """The two tokens the model's beams produce most often after the first step: as
    end-of-sequence ids they end many hypotheses midway."""
    hf, _ = pair
    ids, mask = left_padded()
    free = hf.generate(
        ids, attention_mask=mask, do_sample=False, num_beams=4, num_return_sequences=4,
        max_new_tokens=NEW, pad_token_id=PAD,
    )[:, ids.shape[1] + 1 :]  # fmt: skip
    return [token for token, _ in Counter(free.flatten().tolist()).most_common(2)]


def hf_beam(hf, ids, mask, **kwargs):
    out = hf.generate(
        ids, attention_mask=mask, do_sample=False, return_dict_in_generate=True,
        output_scores=True, **kwargs,
    )  # fmt: skip
    return out.sequences, out.sequences_scores


def count_forwards(model: torch.nn.Module, run):
    """``run()``'s result and how many times it called ``model``'s forward."""
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        return run(), len(calls)
    finally:
        handle.remove()


def assert_matches_hf(hf, ours, ids, mask, **kwargs) -> torch.Tensor:
    """Same ids, same scores, and the search stops at the same step (same forward count)."""
    (expected, expected_scores), hf_steps = count_forwards(
        hf, lambda: hf_beam(hf, ids, mask, **kwargs)
    )
    out, steps = count_forwards(ours, lambda: beam_search_with_scores(ours, ids, mask, **kwargs))
    assert steps == hf_steps, f"{steps} forwards, transformers {hf_steps}: {kwargs}"
    assert out.sequences.dtype == torch.long
    assert out.sequences.shape == expected.shape, kwargs
    assert torch.equal(out.sequences, expected), (kwargs, out.sequences, expected)
    # 1e-5 absolute, or float32 rounding of large scores (a negative length penalty
    # multiplies log p by n ** |α|).
    torch.testing.assert_close(out.sequences_scores, expected_scores, atol=1e-5, rtol=1e-6)
    return out.sequences


def eos_fired(new_tokens: torch.Tensor, eos) -> bool:
    return bool(torch.isin(new_tokens, torch.tensor(eos)).any())


# ---------------------------------------------------------------------- HF parity
@pytest.mark.parametrize("eos_kind", ["one", "two"])
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("num_beams", [2, 4])
def test_matches_hf_over_settings(pair, frequent, num_beams, early_stopping, eos_kind):
    """Every length_penalty × num_return_sequences for this (num_beams, early_stopping,
    eos): ids exactly, sequences_scores to 1e-5; EOS must end some hypotheses early."""
    hf, ours = pair
    ids, mask = left_padded()
    eos = frequent[0] if eos_kind == "one" else frequent
    fired = padded = 0
    for length_penalty, nrs in itertools.product([0.5, 1.0, 2.0], sorted({1, 2, num_beams})):
        kw = dict(
            num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
            num_return_sequences=nrs, eos_token_id=eos, pad_token_id=FILL, max_new_tokens=NEW,
        )  # fmt: skip
        out = assert_matches_hf(hf, ours, ids, mask, **kw)
        assert out.shape[0] == len(LENGTHS) * nrs
        for row in range(out.shape[0]):  # rows grouped by prompt, prompt copied verbatim
            assert torch.equal(out[row, : ids.shape[1]], ids[row // nrs])
        new = out[:, ids.shape[1] :]
        fired += eos_fired(new, eos)
        padded += bool((new[:, -1] == FILL).any())
    assert fired >= 2, "the eos ids should end returned hypotheses"
    assert padded >= 1, "some returned hypothesis should be shorter than another"


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7, 20])
def test_matches_hf_for_each_max_new_tokens(pair, frequent, max_new_tokens):
    hf, ours = pair
    ids, mask = left_padded()
    for early_stopping, length_penalty in [(False, 1.0), ("never", 2.0), ("never", -0.5)]:
        kw = dict(
            num_beams=3, num_return_sequences=3, early_stopping=early_stopping,
            length_penalty=length_penalty, eos_token_id=frequent, pad_token_id=FILL,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        out = assert_matches_hf(hf, ours, ids, mask, **kw)
        assert out.shape[1] <= ids.shape[1] + max_new_tokens


def test_stops_early_once_every_prompt_is_done(pair, frequent):
    """early_stopping=True ends the search as soon as each prompt has K finished
    hypotheses: the output is shorter than max_new_tokens."""
    hf, ours = pair
    ids, mask = left_padded()
    kw = dict(num_beams=2, early_stopping=True, eos_token_id=frequent, pad_token_id=FILL)
    out, steps = count_forwards(
        ours, lambda: assert_matches_hf(hf, ours, ids, mask, max_new_tokens=40, **kw)
    )
    assert out.shape[1] < ids.shape[1] + 40 and steps < 40


@pytest.mark.parametrize("num_beams", [2, 4])
def test_early_stop_heuristics_stop_at_hfs_step(pair, frequent, num_beams):
    """early_stopping=False stops once the best running beam, at its current length, can't
    beat the worst finished one; "never" (length_penalty > 0) judges it at max length, so
    it searches longer. Same forward count as transformers, and both rules do stop."""
    hf, ours = pair
    ids, mask = left_padded()
    steps = {}
    for early_stopping, length_penalty in itertools.product([False, "never"], [-1.0, 0.0, 0.5]):
        kw = dict(
            num_beams=num_beams, early_stopping=early_stopping, length_penalty=length_penalty,
            eos_token_id=frequent, pad_token_id=FILL, max_new_tokens=30,
        )  # fmt: skip
        _, steps[early_stopping, length_penalty] = count_forwards(
            ours, lambda kw=kw: assert_matches_hf(hf, ours, ids, mask, **kw)
        )
    assert max(steps.values()) < 30, steps
    assert steps["never", 0.5] > steps[False, 0.5], steps


def test_without_eos_every_hypothesis_runs_to_max_new_tokens(pair):
    hf, ours = pair
    ids, mask = left_padded()
    for early_stopping in (True, False, "never"):
        kw = dict(num_beams=3, num_return_sequences=2, early_stopping=early_stopping)
        out = assert_matches_hf(hf, ours, ids, mask, max_new_tokens=6, pad_token_id=PAD, **kw)
        assert out.shape == (6, ids.shape[1] + 6)


def test_min_new_tokens_forbids_early_eos_like_hf(pair, frequent):
    hf, ours = pair
    ids, mask = left_padded()
    kw = dict(num_beams=3, eos_token_id=frequent, pad_token_id=FILL, max_new_tokens=10)
    short = beam_search(ours, ids, mask, **kw)[:, ids.shape[1] :]
    assert eos_fired(short[:, :4], frequent), "needs an eos in the first 4 tokens to test"
    out = assert_matches_hf(hf, ours, ids, mask, min_new_tokens=4, **kw)
    assert not eos_fired(out[:, ids.shape[1] : ids.shape[1] + 4], frequent)


def test_pad_id_zero_fills_with_eos_like_hf(pair, frequent):
    """transformers fills finished beams with ``pad or eos[0]`` on a tensor, so a pad id
    of 0 fills with the first eos id; lmforge matches it token for token."""
    hf, ours = pair
    ids, mask = left_padded()
    kw = dict(num_beams=4, num_return_sequences=4, length_penalty=0.5, max_new_tokens=NEW)
    out = assert_matches_hf(hf, ours, ids, mask, eos_token_id=frequent, pad_token_id=PAD, **kw)
    with_fill = assert_matches_hf(
        hf, ours, ids, mask, eos_token_id=frequent, pad_token_id=FILL, **kw
    )
    was_filled = with_fill == FILL
    assert bool(was_filled.any()), "some hypothesis must be padded for this test"
    assert bool((out[was_filled] == frequent[0]).all())


def test_num_beams_one_is_greedy_like_hf(pair, frequent):
    hf, ours = pair
    ids, mask = left_padded()
    kw = dict(eos_token_id=frequent[0], pad_token_id=FILL, max_new_tokens=NEW)
    expected = hf.generate(ids, attention_mask=mask, do_sample=False, num_beams=1, **kw)
    out = beam_search_with_scores(ours, ids, mask, num_beams=1, **kw)
    assert torch.equal(out.sequences, expected) and out.sequences_scores is None


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_other_families_match_hf(hf_model_factory, tmp_path, model_type):
    hf, ours = load_pair(hf_model_factory, tmp_path / model_type, model_type)
    ids, mask = left_padded()
    free = beam_search(ours, ids, mask, num_beams=3, max_new_tokens=NEW, pad_token_id=PAD)
    eos = Counter(free[:, ids.shape[1] + 1 :].flatten().tolist()).most_common(1)[0][0]
    kw = dict(num_beams=3, num_return_sequences=2, eos_token_id=eos, pad_token_id=FILL)
    out = assert_matches_hf(hf, ours, ids, mask, max_new_tokens=NEW, **kw)
    assert eos_fired(out[:, ids.shape[1] :], eos)


def test_special_tokens_default_to_generation_config_then_config(
    hf_model_factory, tmp_path, pair, frequent
):
    """No eos/pad arguments: generation_config.json's eos wins over config.json's, the
    config's pad fills finished hypotheses — as in HF."""
    hf, ours = load_pair(
        hf_model_factory, tmp_path / "cfg", eos_token_id=frequent[0], pad_token_id=FILL
    )
    ids, mask = left_padded()
    kw = dict(num_beams=4, num_return_sequences=2, length_penalty=0.5, max_new_tokens=NEW)
    assert ours.config.eos_token_id == frequent[0]
    out = assert_matches_hf(hf, ours, ids, mask, **kw)
    assert eos_fired(out[:, ids.shape[1] :], frequent[0])

    hf.generation_config.eos_token_id = [frequent[1], frequent[0]]
    hf.save_pretrained(tmp_path / "gc")
    ours = lmforge.load_model(tmp_path / "gc")
    out = assert_matches_hf(hf, ours, ids, mask, **kw)
    assert eos_fired(out[:, ids.shape[1] :], frequent[1])


def test_inferred_attention_mask_and_model_modes(pair, frequent):
    """The mask is inferred from the pad id as in `generate`; module modes are restored
    and the result is an ordinary tensor."""
    hf, ours = pair
    ids, mask = left_padded()
    kw = dict(num_beams=2, eos_token_id=frequent, max_new_tokens=6)
    expected = hf.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=PAD, **kw)
    ours.train()
    try:
        out = beam_search(ours, ids, pad_token_id=PAD, **kw)
        assert ours.training and all(m.training for m in ours.modules())
    finally:
        ours.eval()
    assert torch.equal(out, expected) and not out.is_inference()


def test_zero_new_tokens_returns_the_prompts(pair):
    _, ours = pair
    ids, mask = left_padded()
    out = beam_search(ours, ids, mask, num_beams=3, num_return_sequences=2, max_new_tokens=0)
    assert torch.equal(out, ids.repeat_interleave(2, dim=0))


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_beams=0), "num_beams"),
        (dict(num_beams=2.0), "num_beams"),
        (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences=3 .*num_beams=2"),
        (dict(num_beams=2, num_return_sequences=0), "num_return_sequences"),
        (dict(num_beams=2, early_stopping="always"), "early_stopping"),
        (dict(num_beams=2, early_stopping=1), "early_stopping"),
        (dict(num_beams=2, length_penalty=float("nan")), "length_penalty"),
        (dict(num_beams=2, length_penalty="1.0"), "length_penalty"),
        (dict(num_beams=2, min_new_tokens=-1), "min_new_tokens"),
        (dict(num_beams=1, min_new_tokens=2), "min_new_tokens"),
        (dict(num_beams=2, max_new_tokens=-1), "max_new_tokens"),
        (dict(num_beams=2, max_new_tokens=200), "max_position_embeddings"),
        (dict(num_beams=2, eos_token_id=97), "eos_token_id"),
        (dict(num_beams=2, pad_token_id=-1), "pad_token_id"),
    ],
)
def test_rejects_bad_arguments(pair, kwargs, message):
    _, ours = pair
    ids, mask = left_padded()
    with pytest.raises(ValueError, match=message):
        beam_search(ours, ids, mask, **kwargs)


def test_rejects_right_padding(pair):
    _, ours = pair
    ids, mask = left_padded()
    with pytest.raises(ValueError, match="left-padded"):
        beam_search(ours, ids.flip(1), mask.flip(1), num_beams=2)
