"""lmforge/eval/metrics.py: pass@k against brute-force enumeration of k-subsets, maj@k,
and the bootstrap interval's coverage on a known distribution."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lmforge.eval.metrics import bootstrap_ci, maj_at_k, majority_vote, mean, pass_at_k


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_the_fraction_of_k_subsets_with_a_correct_sample(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n_and_matches_exact_binomials():
    n, c, k = 2000, 7, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # exact big-integer arithmetic
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-10)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="k=11"):
        pass_at_k(10, 3, 11)
    with pytest.raises(ValueError, match="c=12"):
        pass_at_k(10, 12, 1)


def test_majority_vote_and_maj_at_k():
    assert majority_vote(["a", "b", "b", "a"]) == "a"  # tie: first seen wins
    assert majority_vote([None, None, "x"]) == "x"
    assert majority_vote([None]) is None
    answers = ["12", "13", "13", "12", "12"]
    correct = [True, False, False, True, True]
    assert maj_at_k(answers, correct, 3) == 0.0  # 13 wins among the first three
    assert maj_at_k(answers, correct, 5) == 1.0
    assert maj_at_k(answers, correct, 1) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    assert mean([1.0, 0.0, 0.5]) == pytest.approx(0.5) and mean([]) == 0.0


def test_bootstrap_interval_covers_the_true_mean_at_its_confidence_level():
    """Bernoulli(0.3) data, 300 data sets of 200 problems: the 90 % percentile interval
    covers 0.3 about 90 % of the time, and its width is the normal one, 2·1.645·σ/√n."""
    rng = np.random.default_rng(0)
    p, n, trials = 0.3, 200, 300
    covered, widths = 0, []
    for t in range(trials):
        data = (rng.random(n) < p).astype(float)
        low, high = bootstrap_ci(data, confidence=0.9, resamples=400, seed=t)
        covered += low <= p <= high
        widths.append(high - low)
    assert 0.84 <= covered / trials <= 0.96
    expected_width = 2 * 1.645 * math.sqrt(p * (1 - p) / n)
    assert np.mean(widths) == pytest.approx(expected_width, rel=0.08)


def test_bootstrap_is_seeded_and_takes_a_statistic():
    data = [0.0, 1.0, 1.0, 0.0, 1.0]
    assert bootstrap_ci(data, seed=3) == bootstrap_ci(data, seed=3)
    low, high = bootstrap_ci(data, statistic=lambda d: d.max(axis=1))
    assert 0.0 <= low <= high == 1.0
    assert bootstrap_ci([]) == (0.0, 0.0)
    assert bootstrap_ci([2.0] * 4) == (2.0, 2.0)
