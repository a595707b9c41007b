"""Clause tasks: every container meets most actions, none holds a held-out template's widget
kinds (checked on the built tasks, not only on the names), each builds on the training
layouts, the expert solves it in the expert's thought language, and the training split draws
them only when asked, in the asked share."""

from __future__ import annotations

import random
import re

import pytest

from lmforge.agents.action_grammar import instruction_spans
from lmforge.agents.actions import response_thought
from lmforge.agents.agent_data import expert_trajectory, make_agent_dataset
from lmforge.agents.task_clauses import (
    ACTIONS,
    CLAUSE_DIALOG_TEMPLATES,
    CLAUSE_TEMPLATES,
    CLAUSE_TITLES,
    CONTAINERS,
    HELD_OUT_KINDS,
    allowed,
    clause,
)
from lmforge.agents.task_templates import HELDOUT_TEMPLATES, TEMPLATES, TRAIN_TEMPLATES
from lmforge.agents.tasks import SPLITS, TRAIN_LAYOUTS, sample_task
from lmforge.agents.thoughts import thought_regex
from tests.agents.test_task_templates import goal_kinds


def test_the_held_out_kinds_are_the_held_out_templates():
    held = {frozenset(goal_kinds(sample_task(s, "heldout", t)))
            for t in HELDOUT_TEMPLATES for s in range(3)}  # fmt: skip
    assert held == {frozenset(k) for k in HELD_OUT_KINDS}


def test_containers_meet_most_actions_and_never_a_held_out_combination():
    names = set(CLAUSE_TEMPLATES)
    assert names.isdisjoint(TEMPLATES) and set(CLAUSE_TITLES) == names
    assert set(CLAUSE_DIALOG_TEMPLATES) == {n for n in names if n.startswith("message_")}
    singles = {n for n in names if n.count("_") == 1}
    for action in ACTIONS:  # each action alone in at least three of the four containers
        assert sum(f"{'plain' if c == 'none' else c}_{action}" in singles for c in CONTAINERS) >= 3
    assert not allowed("tab", ("set",)) and not allowed("tab", ("tick", "set"))
    assert not allowed("pane", ("tick",)) and not allowed("pane", ("choose",))
    assert not allowed("none", ("type", "choose")) and not allowed("message", ("choose", "change"))
    assert not allowed("none", ("tick", "tick")) and allowed("tab", ("choose", "tick"))


@pytest.mark.parametrize("name", sorted(CLAUSE_TEMPLATES))
def test_each_clause_task_is_solvable_in_the_thought_language(name):
    for seed in range(3):
        task = sample_task(seed, "train", name)
        assert task.layout in TRAIN_LAYOUTS
        kinds = goal_kinds(task)
        assert not any(held <= kinds for held in HELD_OUT_KINDS), (name, kinds)
        assert (task.window.dialog is not None) == (name in CLAUSE_DIALOG_TEMPLATES)
        for wid, value in task.goal.items():  # the instruction names every target and value
            w = task.window.find(wid)
            assert w.label in task.instruction
            assert isinstance(value, bool) or value in task.instruction
        traj = expert_trajectory(task)
        assert traj.success, (name, seed, task.instruction)
        rx = thought_regex(instruction_spans(task.instruction))
        for step in traj.steps:
            assert re.fullmatch(rx, response_thought(step.response)), (name, step.response)


def test_clause_text_widgets_and_goal_agree():
    rng = random.Random(0)
    text, widgets, goal = clause("set", rng, "x", {"Size", "Colour", "Font", "Speed"})
    assert widgets[0].label == "Mode" and widgets[0].wid == "xmode"
    assert text == f"set Mode to {goal['xmode']}" and goal["xmode"] != widgets[0].value()
    text, widgets, goal = clause("tick", rng, "y", set(), boxes=3)
    assert len(widgets) == 3 and len(goal) == 1
    ((wid, want),) = goal.items()
    target = next(w for w in widgets if w.wid == wid)
    assert want is (not target.checked) and f"'{target.label}'" in text
    text, widgets, goal = clause("change", rng, "z", set())
    assert text.startswith(f"change {widgets[0].label} to '") and widgets[0].text


def test_the_training_split_draws_clause_tasks_only_when_asked():
    plain = [sample_task(s, "train").template for s in range(200)]
    assert set(plain) == set(TRAIN_TEMPLATES)
    mixed = [sample_task(s, "train", clauses=0.4).template for s in range(500)]
    share = sum(t in CLAUSE_TEMPLATES for t in mixed) / len(mixed)
    assert 0.33 < share < 0.47 and set(mixed) - set(CLAUSE_TEMPLATES) == set(TRAIN_TEMPLATES)
    for split in SPLITS:
        if split != "train":
            with pytest.raises(ValueError, match="training-only"):
                sample_task(0, split, clauses=0.5)
    data = make_agent_dataset("train", 6, seed=0, clauses=1.0)
    assert all(ex.meta["template"] in CLAUSE_TEMPLATES for ex in data["trajectory"])
