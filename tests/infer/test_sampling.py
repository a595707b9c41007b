"""Sampling filters: exact parity with transformers' logits warpers, the draw itself, and the
greedy rows' argmax."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmforge.infer.sampling import (
    apply_min_p,
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    inverse_cdf_sample,
    process_logits,
    processed_probs,
    row_uniforms,
    sample_next_token,
    top_logprobs,
)

INF = float("inf")


def _logit_cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    extreme = 3 * torch.randn(6, 40, generator=g)
    extreme[0, :5] = 1e4  # five tied, huge winners
    extreme[1, 3] = -1e4
    extreme[2, ::3] = -INF  # already filtered tokens
    extreme[3, :] = -INF
    extreme[3, 7] = 0.0  # a single surviving token
    extreme[4, :] = 0.0  # uniform row: every token tied
    extreme[5, :20] = 88.0  # softmax of the rest underflows to 0
    return {
        "gaussian": 2 * torch.randn(8, 97, generator=g),
        "ties": torch.randint(-3, 3, (8, 50), generator=g).float(),
        "small_vocab_ties": torch.randint(0, 2, (16, 5), generator=g).float(),
        "extreme": extreme,
    }


CASES = _logit_cases()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 3.0])
def test_temperature_matches_hf(case, temperature):
    logits = CASES[case]
    expected = TemperatureLogitsWarper(temperature)(None, logits)
    assert torch.equal(apply_temperature(logits, temperature), expected)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("top_k", [1, 2, 5, 39, 40, 97, 1000])
def test_top_k_matches_hf(case, top_k):
    logits = CASES[case]
    expected = TopKLogitsWarper(top_k)(None, logits)
    assert torch.equal(apply_top_k(logits, top_k), expected)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("top_p", [1e-6, 0.1, 0.3, 0.5, 0.77, 0.9, 0.999])
def test_top_p_matches_hf(case, top_p):
    logits = CASES[case]
    expected = TopPLogitsWarper(top_p)(None, logits)
    got = apply_top_p(logits, top_p)
    assert torch.equal(got, expected)
    assert bool((got > -INF).any(dim=-1).all()), "top-p must keep at least one token"


@pytest.mark.parametrize(
    ("top_p", "kept"), [(0.3, [1]), (0.45, [1]), (0.6, [1, 3]), (0.9, [0, 1, 3])]
)
def test_top_p_keeps_the_smallest_nucleus(top_p, kept):
    """probs 0.2 / 0.5 / 0.0 / 0.3: the fewest most-likely tokens with mass ≥ top_p survive."""
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.0, 0.3]]))
    survivors = (apply_top_p(logits, top_p) > -INF)[0].nonzero().flatten().tolist()
    assert survivors == kept


@pytest.mark.parametrize("case", CASES)
def test_disabled_filters_are_identity(case):
    logits = CASES[case]
    assert apply_top_k(logits, 0) is logits
    assert apply_top_p(logits, 1.0) is logits
    assert torch.equal(process_logits(logits), logits)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.7, 5, 0.9), (1.5, 20, 0.5)])
def test_process_logits_matches_hf_chain(case, temperature, top_k, top_p):
    logits = CASES[case]
    expected = logits
    for warper in (
        TemperatureLogitsWarper(temperature),
        TopKLogitsWarper(top_k),
        TopPLogitsWarper(top_p),
    ):
        expected = warper(None, expected)
    assert torch.equal(process_logits(logits, temperature, top_k, top_p), expected)


def test_processed_probs_is_the_float32_softmax_of_process_logits():
    logits = CASES["gaussian"].to(torch.bfloat16)
    probs = processed_probs(logits, 0.7, 5, 0.9)
    assert probs.dtype == torch.float32
    assert torch.equal(probs, process_logits(logits.float(), 0.7, 5, 0.9).softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[0]))
    assert bool(((probs > 0).sum(-1) <= 5).all())  # top-k applied


def test_filters_leave_input_untouched_and_work_on_3d():
    logits = CASES["gaussian"].clone()
    before = logits.clone()
    process_logits(logits, 0.5, 3, 0.5)
    assert torch.equal(logits, before)
    stacked = logits.view(2, 4, -1)
    assert torch.equal(
        process_logits(stacked, 0.5, 3, 0.5).view(8, -1), process_logits(logits, 0.5, 3, 0.5)
    )


def test_greedy_is_argmax():
    logits = CASES["gaussian"]
    expected = logits.argmax(dim=-1)
    assert torch.equal(sample_next_token(logits), expected)
    assert torch.equal(sample_next_token(logits, do_sample=True, temperature=0.0), expected)
    # top_k = 1 leaves one token, so sampling is deterministic and equals greedy.
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next_token(logits, True, 1.0, 1, 1.0, g), expected)


def test_greedy_ties_pick_lowest_id():
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0]])
    assert sample_next_token(logits).tolist() == [1]


def test_sampling_is_reproducible_with_a_generator():
    logits = CASES["gaussian"].repeat(50, 1)

    def draw(seed):
        return sample_next_token(logits, True, 1.3, 0, 1.0, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    assert draw(3).dtype == torch.int64 and draw(3).shape == (400,)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 1.0), (0.6, 0, 1.0), (2.0, 4, 1.0), (1.0, 0, 0.8), (0.8, 5, 0.9)],
)
def test_draws_follow_the_filtered_softmax(temperature, top_k, top_p):
    """Empirical frequencies of 60k draws match softmax(process_logits(...)): a chi-square
    goodness-of-fit statistic below the 0.999 quantile, zero draws of filtered tokens."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    probs = process_logits(logits[None], temperature, top_k, top_p).softmax(-1)[0]
    n = 60_000
    g = torch.Generator().manual_seed(1234)
    draws = sample_next_token(logits.expand(n, -1), True, temperature, top_k, top_p, g)
    counts = torch.bincount(draws, minlength=logits.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0
    assert support.sum() >= 1
    dof = int(support.sum()) - 1
    # 0.999 quantiles of chi-square with dof = 0..7 degrees of freedom.
    critical = [0.0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32][dof]
    assert _chi_square(counts[support], probs[support].double()) <= critical + 1e-9
    assert 0.5 * float((counts / n - probs.double()).abs().sum()) < 0.01  # total variation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: apply_temperature(x, 0.0), "temperature"),
        (lambda x: apply_temperature(x, -1.0), "temperature"),
        (lambda x: apply_top_k(x, -1), "top_k"),
        (lambda x: apply_top_k(x, 2.5), "top_k"),
        (lambda x: apply_top_p(x, 0.0), "top_p"),
        (lambda x: apply_top_p(x, 1.5), "top_p"),
        (lambda x: sample_next_token(x, True, float("nan")), "temperature"),
        (lambda x: sample_next_token(x, True, 1.0, -2), "top_k"),
        (lambda x: sample_next_token(x, True, 1.0, 0, 0.0), "top_p"),
        (lambda x: sample_next_token(x[0]), r"\[batch, vocab\]"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(CASES["gaussian"])


# ---------------------------------------------------------------------- engine extras
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 0.9, 1.0])
def test_min_p_matches_hf(case, min_p):
    logits = CASES[case]
    ours = apply_min_p(logits, min_p)
    if min_p == 0:
        assert ours is logits
        return
    expected = MinPLogitsWarper(min_p)(None, logits.clone())
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("case", ["gaussian", "ties"])
@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_matches_hf(case, penalty):
    logits = CASES[case]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, logits.shape[-1], (logits.shape[0], 12), generator=g)  # repeats
    expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    assert torch.equal(apply_repetition_penalty(logits, ids, penalty), expected)


def test_presence_and_frequency_penalties_follow_openai_formula():
    logits = torch.tensor([1.0, 2.0, -1.0, 0.5])
    counts = torch.tensor([0, 3, 1, 0])
    out = apply_presence_frequency_penalty(logits, counts, presence=0.5, frequency=0.25)
    assert torch.equal(out, torch.tensor([1.0, 2.0 - 0.75 - 0.5, -1.0 - 0.25 - 0.5, 0.5]))
    assert apply_presence_frequency_penalty(logits, counts, 0.0, 0.0) is logits


def test_top_logprobs_are_log_softmax():
    logits = CASES["gaussian"][0]
    lp, top = top_logprobs(logits, 5, 3)
    expected = torch.log_softmax(logits, -1)
    assert lp == pytest.approx(float(expected[5]))
    values, ids = expected.topk(3)
    assert [i for i, _ in top] == ids.tolist()
    assert [v for _, v in top] == pytest.approx(values.tolist())
    assert top_logprobs(logits, 5, 0)[1] == []


def test_penalty_arguments_are_checked():
    with pytest.raises(ValueError, match="min_p"):
        apply_min_p(CASES["gaussian"], 1.5)
    with pytest.raises(ValueError, match="repetition_penalty"):
        apply_repetition_penalty(CASES["gaussian"], torch.zeros(8, 1, dtype=torch.long), 0.0)


# ---------------------------------------------------------------------- inverse-CDF draws
@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "min_p"),
    [(1.0, 0, 1.0, 0.0), (0.6, 0, 1.0, 0.0), (2.0, 4, 1.0, 0.0), (0.8, 5, 0.9, 0.0),
     (1.0, 0, 1.0, 0.2)],
)  # fmt: skip
def test_inverse_cdf_draws_follow_the_hf_warped_softmax(temperature, top_k, top_p, min_p):
    """The engine's cheaper draw (one uniform per row) is exact in distribution: 60k draws
    from HF's warper chain (temperature → top-k → top-p → min-p, `transformers`' own
    warpers) pass a chi-square test at the 0.999 level and never pick a filtered token."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    warped = TemperatureLogitsWarper(temperature)(None, logits[None])
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p < 1:
        warped = TopPLogitsWarper(top_p)(None, warped)
    if min_p:
        warped = MinPLogitsWarper(min_p)(None, warped)
    probs = warped.softmax(-1)[0]
    n = 60_000
    g = torch.Generator().manual_seed(99)
    draws = inverse_cdf_sample(probs.expand(n, -1), torch.rand(n, dtype=torch.float64, generator=g))
    counts = torch.bincount(draws, minlength=logits.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0
    dof = int(support.sum()) - 1
    critical = [0.0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32][dof]
    assert _chi_square(counts[support], probs[support].double()) <= critical + 1e-9


def test_inverse_cdf_extreme_uniforms_pick_tokens_of_positive_probability():
    """u = 0 picks the first token with p > 0, the largest double below 1 the last one —
    never a filtered token before or after them (rounding of u · Σp is guarded)."""
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0, 0.0]] * 2)
    top = 1.0 - 2.0**-53
    picked = inverse_cdf_sample(probs, torch.tensor([0.0, top], dtype=torch.float64))
    assert picked.tolist() == [1, 3]
    unnormalised = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    assert inverse_cdf_sample(unnormalised, torch.tensor([top, top])).tolist() == [1, 0]


def test_row_uniforms_take_one_draw_from_each_rows_generator():
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 1)]
    u = row_uniforms(gens)
    assert u.dtype == torch.float64 and u.shape == (3,)
    assert u[0] == u[2] != u[1]
    again = torch.Generator().manual_seed(1)
    assert u[0] == torch.rand(1, dtype=torch.float64, generator=again)[0]
    assert torch.equal(gens[0].get_state(), again.get_state())
    assert row_uniforms([]).shape == (0,)


@pytest.mark.parametrize("threads", [1, 2])
def test_greedy_tokens_equal_torch_argmax(threads, torch_threads):
    """`greedy_tokens` (lmforge's C++ row argmax on the CPU) picks torch.argmax's index: the
    first maximum on ties, the first NaN, ±inf, widths around the vector lanes; the portable
    loop too; other dtypes go through torch."""
    from lmforge.infer.sampling import greedy_tokens
    from lmforge.nn.cpp_ops import cpp_ops_available

    g = torch.Generator().manual_seed(0)
    torch_threads(threads)
    for width in (1, 7, 8, 15, 16, 17, 100, 8193):
        x = torch.randn(9, width, generator=g)
        x[1] = 0.0  # all tied: index 0
        x[2, width // 2 :] = x[2].max() + 1  # ties at the maximum: the first
        x[3] = float("-inf")
        x[4, -1] = float("inf")
        x[5, width // 3] = float("nan")
        x[5, -1] = float("nan")
        x[6, 0] = float("nan")
        want = x.argmax(-1).tolist()
        assert greedy_tokens(x) == want, width
        if cpp_ops_available():
            got = torch.ops.lmforge_ext.argmax_rows(x, True).tolist()
            assert got == want, width
    y = torch.randn(3, 50, generator=g).to(torch.bfloat16)
    assert greedy_tokens(y) == y.argmax(-1).tolist()
    z = torch.randn(4, 30, generator=g)[:, ::2]  # strided rows
    assert greedy_tokens(z) == z.argmax(-1).tolist()
    if cpp_ops_available():
        with pytest.raises(RuntimeError, match="argmax_rows: x must be a contiguous fp32"):
            torch.ops.lmforge_ext.argmax_rows(torch.zeros(2, 0))
