"""Sample-based metrics: pass@k (Chen et al. 2021), maj@k (self-consistency, Wang et al.
2023) and percentile-bootstrap confidence intervals over problems (Efron 1979).

    >>> pass_at_k(n=10, c=3, k=1)
    0.3
    >>> majority_vote(["12", "13", "12"])
    '12'
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "majority_vote", "maj_at_k", "mean", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from ``n`` samples of which ``c`` are correct
    (Chen et al. 2021, eq. 1): ``1 − C(n−c, k) / C(n, k)``, the probability that a random
    k-subset of the n samples holds at least one correct one.

    Computed as ``1 − ∏_{i=n−c+1}^{n} (1 − k/i)`` (the paper's numerically stable form: no
    huge binomials); exactly 1 when fewer than k samples are wrong.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k(n={n!r}, c={c!r}, k={k!r}) takes integers")
    if not 0 <= c <= n:
        raise ValueError(f"c={c} correct samples must be in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, n={n}] (draw at least k samples per problem)")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """The most frequent answer (None — no answer extracted — never wins unless it is the
    only one); ties go to the answer seen first."""
    counted = Counter(a for a in answers if a is not None)
    if not counted:
        return None
    best = max(counted.values())
    return next(a for a in answers if a is not None and counted[a] == best)


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
    """maj@k of one problem (self-consistency, Wang et al. 2023): 1.0 if the majority answer
    of the first ``k`` samples is a correct one, else 0.0. ``answers[i]`` is sample i's
    normalised answer and ``correct[i]`` its verdict."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} verdicts")
    if not 1 <= k <= len(answers):
        raise ValueError(f"k={k} must be in [1, {len(answers)}] samples")
    voted = majority_vote(answers[:k])
    if voted is None:
        return 0.0
    return float(any(ok for a, ok in zip(answers[:k], correct[:k]) if a == voted))


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean (0.0 for no values)."""
    return float(sum(values) / len(values)) if len(values) else 0.0


def bootstrap_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``statistic`` (default: the mean) of
    per-problem ``values``: resample the problems with replacement ``resamples`` times
    (seeded), take the (1 − confidence)/2 and (1 + confidence)/2 quantiles of the statistic.
    ``statistic`` maps a ``[resamples, n]`` array to ``[resamples]``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    if resamples < 1:
        raise ValueError(f"resamples={resamples} must be ≥ 1")
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    draws = data[rng.integers(0, data.size, size=(resamples, data.size))]
    stats = draws.mean(axis=1) if statistic is None else np.asarray(statistic(draws))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)
