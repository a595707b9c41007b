"""Agent metrics on hand-built episodes, each figure counted by hand in the comments."""

from __future__ import annotations

import math
import random

import pytest

from lmforge.agents.metrics import (
    EpisodeRecord,
    StepRecord,
    click_accuracy,
    grounding_accuracy,
    invalid_action_rate,
    mean_steps,
    paired_gain,
    success_rate,
    summarize,
)

BOX = (10, 10, 20, 20)


def episodes():
    return [
        # list_open, success: 2 grounded steps, both inside → 2/2 hits
        EpisodeRecord("list_open", True, [StepRecord(True, (15, 15), BOX), StepRecord(True, (10, 19), BOX)]),
        # list_open, failure: inside; outside (x=20 is outside the half-open box); invalid → 1/3
        EpisodeRecord("list_open", False, [StepRecord(True, (12, 12), BOX), StepRecord(True, (20, 15), BOX),
                                           StepRecord(False, None, BOX)]),
        # login, success: a typing step (no target), a click where none expected, one hit → 1/1
        EpisodeRecord("login", True, [StepRecord(True, None, None), StepRecord(True, (0, 0), None),
                                      StepRecord(True, (11, 11), BOX)]),
        # login, failure: points nowhere where a click was expected; invalid without target → 0/1
        EpisodeRecord("login", False, [StepRecord(True, None, BOX), StepRecord(False)]),
    ]  # fmt: skip


def test_overall_figures():
    eps = episodes()
    assert success_rate(eps) == 2 / 4
    assert mean_steps(eps) == (2 + 3 + 3 + 2) / 4
    assert grounding_accuracy(eps) == pytest.approx((2 + 1 + 1 + 0) / (2 + 3 + 1 + 1))
    assert invalid_action_rate(eps) == 2 / 10


def test_per_template_summary():
    s = summarize(episodes())
    assert s["episodes"] == 4 and s["grounded_steps"] == 7
    lo, lg = s["per_template"]["list_open"], s["per_template"]["login"]
    assert (lo["success_rate"], lo["mean_steps"], lo["invalid_action_rate"]) == (0.5, 2.5, 1 / 5)
    assert lo["grounding_accuracy"] == pytest.approx(3 / 5)
    assert (lg["success_rate"], lg["mean_steps"], lg["grounding_accuracy"]) == (0.5, 2.5, 0.5)
    assert list(s["per_template"]) == ["list_open", "login"]
    assert s["successes"] == [int(e.success) for e in episodes()]


def test_paired_gain_against_the_normal_approximation():
    """Δ is the mean paired difference; with 400 tasks the percentile bootstrap's 95 % interval
    is close to Δ ± 1.96 · sd(d) / √n (the paired t-interval, computed here by hand)."""
    rng = random.Random(3)
    before = [int(rng.random() < 0.5) for _ in range(400)]
    after = [b if rng.random() < 0.8 else int(rng.random() < 0.7) for b in before]
    d = [a - b for a, b in zip(after, before)]
    mean = sum(d) / len(d)
    half = 1.96 * math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    g = paired_gain(before, after)
    assert g["gain"] == pytest.approx(mean) and g["confidence"] == 0.95
    assert g["low"] == pytest.approx(mean - half, abs=0.006)
    assert g["high"] == pytest.approx(mean + half, abs=0.006)
    assert (g["won"], g["lost"]) == (d.count(1), d.count(-1))
    assert paired_gain(before, after) == g  # seeded
    assert paired_gain([1, 0, 1], [1, 0, 1]) == {"gain": 0.0, "low": 0.0, "high": 0.0,
                                                 "confidence": 0.95, "won": 0, "lost": 0}  # fmt: skip
    with pytest.raises(ValueError, match="2 before, 3 after"):
        paired_gain([1, 0], [1, 0, 1])


def test_empty_inputs_are_zero():
    assert (
        success_rate([]) == mean_steps([]) == grounding_accuracy([]) == invalid_action_rate([]) == 0
    )
    assert summarize([])["per_template"] == {}


def test_click_accuracy_on_predicted_text():
    preds = [
        "click(15,15)",
        "left_double(19,19)",
        "click(20,20)",
        "type('x')",
        "clack(1,1)",
        " click(10,10)\n",
    ]
    assert click_accuracy(preds, [BOX] * 6) == 3 / 6
    assert click_accuracy(["click(15,15)"], [BOX], screen=(12, 12)) == 0  # off a 12×12 screen
    with pytest.raises(ValueError, match="2 predictions but 1 target boxes"):
        click_accuracy(["a", "b"], [BOX])
