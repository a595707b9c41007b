"""Learning-rate schedules as pure functions of the step and the run's progress.

``progress`` ∈ [0, 1] is how far the run is toward its stopping condition (steps, tokens or
wall-clock time, whichever is furthest), so a run limited by tokens or time decays on time.
Warmup is counted in optimizer steps.

- ``cosine``: linear warmup, then cosine decay to ``min_ratio × peak`` (Loshchilov & Hutter
  2017, SGDR, without restarts; the LLaMA recipe, Touvron et al. 2023, §2.2).
- ``wsd`` (warmup-stable-decay): linear warmup, constant peak, then a linear decay to
  ``min_ratio × peak`` over the last ``decay_fraction`` of the run (Hu et al. 2024,
  MiniCPM, §4); the stable phase lets a run be extended without re-warming.
- ``constant``: linear warmup, then the peak.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd", "constant")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup: ``(step + 1) / warmup_steps`` for the first steps (step 0 is not 0)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def cosine_factor(progress: float, min_ratio: float) -> float:
    """``min + (1 - min) · ½(1 + cos(π·progress))``."""
    p = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def wsd_factor(progress: float, min_ratio: float, decay_fraction: float) -> float:
    """1 until ``1 - decay_fraction``, then linear down to ``min_ratio`` at progress 1."""
    p = min(max(progress, 0.0), 1.0)
    start = 1.0 - decay_fraction
    if decay_fraction <= 0 or p <= start:
        return 1.0
    return 1.0 - (1.0 - min_ratio) * (p - start) / decay_fraction


def lr_at(
    step: int,
    progress: float,
    *,
    peak: float,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    min_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based) at run progress ``progress``."""
    warm = warmup_factor(step, warmup_steps)
    if schedule == "cosine":
        return peak * warm * cosine_factor(progress, min_ratio)
    if schedule == "wsd":
        return peak * warm * wsd_factor(progress, min_ratio, decay_fraction)
    if schedule == "constant":
        return peak * warm
    raise ValueError(f"unknown schedule {schedule!r}; choose from {list(SCHEDULES)}")
