"""How long a run lasts and how far its learning-rate schedule has got — in steps.

A run stops at the first of ``train.max_steps``, ``train.epochs`` (whole passes over the
data, counted in steps up front), ``train.max_tokens`` and ``train.max_time_s``. The
schedule, though, is a function of the step alone (and of the tokens seen, which the data
fixes per step), never of the clock: its length is ``optim.schedule_steps`` when declared,
else the step limit (`schedule_length`). A time budget may stop a run early; it never
stretches or shrinks the schedule, so two identical runs give identical weights whether or
not a (non-binding) time budget was set. When the budget *will* bind, `time_budget_warning`
says so from the measured speed, and `stop_note` says so again in the summary.
"""

from __future__ import annotations

import math
from typing import Any


def epoch_steps(data: Any, epochs: float, grad_accum: int) -> int | None:
    """Optimizer steps in ``epochs`` passes over ``data`` — a loader with ``rows_per_epoch``
    and ``global_batch_size`` (rows per yield over all ranks) — or None when ``data`` does
    not say how long an epoch is (or ``epochs`` is 0)."""
    rows = getattr(data, "rows_per_epoch", None)
    batch = getattr(data, "global_batch_size", None)
    if not epochs or not rows or not batch:
        return None
    return max(1, math.ceil(epochs * rows / (batch * grad_accum)))


def step_limit(max_steps: int, epoch_limit: int | None) -> int:
    """The step at which the step-denominated limits stop the run (0: none)."""
    limits = [n for n in (max_steps, epoch_limit) if n]
    return min(limits) if limits else 0


def schedule_length(schedule_steps: int, max_steps: int, epoch_limit: int | None) -> int:
    """Steps the learning-rate schedule runs over: declared, else the step limit (0: none)."""
    return schedule_steps or step_limit(max_steps, epoch_limit)


def schedule_progress(
    step: int, tokens: int, length: int, max_tokens: int, declared: bool = False
) -> float:
    """Schedule progress in [0, 1] after ``step`` steps and ``tokens`` tokens: ``step /
    length``, or the furthest of that and ``tokens / max_tokens`` when the length was not
    declared (``optim.schedule_steps``); 0 when neither is known (warmup, then the peak)."""
    parts = []
    if length:
        parts.append(step / length)
    if max_tokens and not declared:
        parts.append(tokens / max_tokens)
    return min(1.0, max(parts)) if parts else 0.0


def time_budget_warning(
    max_time_s: float, elapsed_s: float, step: int, seconds_per_step: float, limit: int
) -> str | None:
    """A warning when ``max_time_s`` will stop the run before step ``limit`` at the measured
    ``seconds_per_step`` (None when the budget will not bind)."""
    if not (max_time_s and limit and seconds_per_step > 0):
        return None
    expected = step + int(max(0.0, max_time_s - elapsed_s) / seconds_per_step)
    if expected >= limit:
        return None
    return (
        f"train.max_time_s={max_time_s:g} will stop this run after {max_time_s:g} s, about "
        f"{expected} of {limit} steps ({seconds_per_step:.3g} s/step); the schedule is sized "
        f"for {limit} steps and will not finish — set train.max_time_s=0 to train them all, "
        "or rerun the command later to continue"
    )


def stop_note(reason: str, step: int, limit: int, max_time_s: float) -> str | None:
    """The summary's word when the time budget stopped the run short of its step limit."""
    if reason != "max_time_s" or not limit or step >= limit:
        return None
    return (
        f"stopped by train.max_time_s={max_time_s:g} at step {step} of {limit}: the schedule "
        "did not finish; run the same command again to continue from this step"
    )


__all__ = [
    "epoch_steps",
    "schedule_length",
    "schedule_progress",
    "step_limit",
    "stop_note",
    "time_budget_warning",
]
