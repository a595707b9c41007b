"""Agent metrics, pure functions over episode records: success rate, mean steps, grounding
accuracy (the acted-on point lies in the target's box), invalid-action rate — overall and
per task template, as UI-TARS reports its online benchmarks (success rate) and ScreenSpot
(grounding: a click counts when it falls inside the element's bounding box).

    records = [EpisodeRecord("list_open", True, [StepRecord(True, (40, 30), (30, 20, 90, 40))])]
    summarize(records)   # {"episodes": 1, "success_rate": 1.0, …, "per_template": {…}}
    paired_gain(sft["successes"], rl["successes"])   # {"gain": 0.095, "low": …, "high": …, …}

A step's ``target_box`` is the box the expert would act on in that state (None when the
expert's move is not a pointing action, e.g. typing); grounding accuracy counts the steps
that have one, and a step that points nowhere (or is invalid) there counts as a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lmforge.agents.actions import ActionParseError, action_point, parse_action
from lmforge.agents.widgets import Box, box_contains
from lmforge.eval.metrics import bootstrap_ci


@dataclass(frozen=True)
class StepRecord:
    """One agent step: did it parse, the point it acted on, the expert's target box."""

    valid: bool
    point: tuple[int, int] | None = None
    target_box: Box | None = None


@dataclass
class EpisodeRecord:
    """One episode: its template, whether it succeeded, its steps, its goal progress."""

    template: str
    success: bool
    steps: list[StepRecord] = field(default_factory=list)
    progress: float = 0.0  # the share of the task's goal values the last window holds


def success_rate(records: Sequence[EpisodeRecord]) -> float:
    """Share of episodes that succeeded (0 for none)."""
    return sum(r.success for r in records) / len(records) if records else 0.0


def mean_steps(records: Sequence[EpisodeRecord]) -> float:
    """Mean number of steps per episode, successful or not (0 for none)."""
    return sum(len(r.steps) for r in records) / len(records) if records else 0.0


def grounded_steps(records: Sequence[EpisodeRecord]) -> list[StepRecord]:
    """The steps whose expert move is a pointing action (they have a target box)."""
    return [s for r in records for s in r.steps if s.target_box is not None]


def grounding_accuracy(records: Sequence[EpisodeRecord]) -> float:
    """Share of the grounded steps whose valid action points inside the target box."""
    steps = grounded_steps(records)
    hits = sum(
        s.valid and s.point is not None and box_contains(s.target_box, *s.point) for s in steps
    )
    return hits / len(steps) if steps else 0.0


def invalid_action_rate(records: Sequence[EpisodeRecord]) -> float:
    """Share of all steps whose output did not parse into an action."""
    steps = [s for r in records for s in r.steps]
    return sum(not s.valid for s in steps) / len(steps) if steps else 0.0


def summarize(records: Sequence[EpisodeRecord]) -> dict:
    """All four metrics overall and per template (templates sorted by name)."""

    def block(rs: Sequence[EpisodeRecord]) -> dict:
        return {"episodes": len(rs), "success_rate": success_rate(rs), "mean_steps": mean_steps(rs),
                "grounding_accuracy": grounding_accuracy(rs),
                "grounded_steps": len(grounded_steps(rs)),
                "invalid_action_rate": invalid_action_rate(rs)}  # fmt: skip

    templates = sorted({r.template for r in records})
    per = {t: block([r for r in records if r.template == t]) for t in templates}
    return {**block(records), "per_template": per,
            "successes": [int(r.success) for r in records]}  # fmt: skip


def paired_gain(
    before: Sequence[int], after: Sequence[int], confidence: float = 0.95,
    resamples: int = 10_000, seed: int = 0,
) -> dict:  # fmt: skip
    """Two agents' per-episode successes on the same tasks (``summarize``'s ``successes``,
    in one order): the gain in success rate Δ = mean(after_i − before_i), its paired
    percentile-bootstrap confidence interval (the tasks resampled, both agents' outcomes kept
    together: `lmforge.eval.metrics.bootstrap_ci` of the differences), and the episodes each
    agent won alone."""
    if len(before) != len(after) or not before:
        raise ValueError(f"paired successes need one non-empty task list: {len(before)} before, "
                         f"{len(after)} after")  # fmt: skip
    diffs = [int(b) - int(a) for a, b in zip(before, after, strict=True)]
    low, high = bootstrap_ci(diffs, confidence, resamples, seed)
    return {"gain": sum(diffs) / len(diffs), "low": low, "high": high, "confidence": confidence,
            "won": diffs.count(1), "lost": diffs.count(-1)}  # fmt: skip


def click_accuracy(
    predictions: Sequence[str], boxes: Sequence[Box], screen: tuple[int, int] | None = None
) -> float:
    """Grounding examples: share of predicted actions (text) that parse and point inside
    their target box (an unparseable prediction is a miss)."""
    if len(predictions) != len(boxes):
        raise ValueError(f"{len(predictions)} predictions but {len(boxes)} target boxes")
    hits = 0
    for text, box in zip(predictions, boxes, strict=True):
        try:
            point = action_point(parse_action(text.strip(), screen))
        except ActionParseError:
            continue
        hits += point is not None and box_contains(box, *point)
    return hits / len(boxes) if boxes else 0.0


__all__ = [
    "EpisodeRecord",
    "StepRecord",
    "click_accuracy",
    "grounded_steps",
    "grounding_accuracy",
    "invalid_action_rate",
    "mean_steps",
    "paired_gain",
    "success_rate",
    "summarize",
]
