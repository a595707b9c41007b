"""Agent metrics on hand-built episodes, each figure counted by hand in the comments."""

from __future__ import annotations

import pytest

from lmforge.agents.metrics import (
    EpisodeRecord,
    StepRecord,
    click_accuracy,
    grounding_accuracy,
    invalid_action_rate,
    mean_steps,
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
