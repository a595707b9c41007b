"""The task templates: the composed ones are training-only, none repeats a held-out
template's combination of steps, the training split draws them only when asked (so the data
of earlier runs and every held-out split stay the same), and each builds a solvable task."""

from __future__ import annotations

import random

import pytest

from lmforge.agents.agent_data import expert_trajectory
from lmforge.agents.task_templates import (
    COMPOSED_TEMPLATES,
    COMPOSED_TITLES,
    DIALOG_TEMPLATES,
    DROPDOWNS,
    HELDOUT_TEMPLATES,
    TEMPLATES,
    TITLES,
    TOGGLES,
    TRAIN_TEMPLATES,
    dropdown,
    other_value,
    toggles,
    window_buttons,
)
from lmforge.agents.tasks import SPLITS, sample_task
from lmforge.agents.widgets import ScrollPane, Tabs


def goal_kinds(task) -> frozenset[str]:
    """The kinds of what a task asks to change, with the containers (tab, pane, message) that
    stand between the screen and them."""
    kinds = {"dialog"} if task.window.dialog is not None else set()
    for w in task.window.walk():
        if isinstance(w, Tabs):
            inside = {c.wid for page in w.pages for c in page}
        elif isinstance(w, ScrollPane):
            inside = {c.wid for c in w.children}
        else:
            continue
        if inside & set(task.goal):
            kinds.add(w.kind)
    kinds |= {w.kind for w in task.window.walk() if w.wid in task.goal}
    return frozenset(kinds)


def test_composed_templates_are_new_names_with_titles():
    assert set(COMPOSED_TEMPLATES).isdisjoint(TEMPLATES)
    assert set(COMPOSED_TITLES) == set(COMPOSED_TEMPLATES) and set(TITLES) == set(TEMPLATES)
    assert set(DIALOG_TEMPLATES) <= set(TEMPLATES) | set(COMPOSED_TEMPLATES)
    assert set(TRAIN_TEMPLATES) | set(HELDOUT_TEMPLATES) == set(TEMPLATES)


def test_no_composed_template_repeats_a_heldout_combination():
    held = {sample_task(0, "heldout", t).template: goal_kinds(sample_task(s, "heldout", t))
            for t in HELDOUT_TEMPLATES for s in range(3)}  # fmt: skip
    assert held["tab_dropdown"] == {"tabs", "dropdown"}
    assert held["pane_toggle"] == {"pane", "checkbox"}
    assert held["profile_edit"] == {"textfield", "radio"}
    for name in COMPOSED_TEMPLATES:
        for seed in range(10):
            kinds = goal_kinds(sample_task(seed, "train", name))
            assert len(kinds) >= 2, (name, kinds)  # a combination of two steps
            assert kinds not in held.values(), (name, kinds)


def test_the_training_split_draws_composed_templates_only_when_asked():
    plain = [sample_task(s, "train") for s in range(300)]
    assert {t.template for t in plain} == set(TRAIN_TEMPLATES)
    mixed = [sample_task(s, "train", composed=True) for s in range(300)]
    assert {t.template for t in mixed} == set(TRAIN_TEMPLATES) | set(COMPOSED_TEMPLATES)
    # every task either way is built on a training layout
    assert {t.layout for t in mixed} == {t.layout for t in plain}
    for split in SPLITS:
        if split != "train":
            with pytest.raises(ValueError, match="training-only"):
                sample_task(0, split, composed=True)
            assert all(sample_task(s, split).template in TEMPLATES for s in range(100))


@pytest.mark.parametrize("name", sorted(COMPOSED_TEMPLATES))
def test_composed_tasks_name_their_targets_and_the_expert_solves_them(name):
    for seed in range(20):
        task = sample_task(seed, "train", name)
        traj = expert_trajectory(task)
        assert traj.success and 2 <= len(traj.steps) <= 8, (name, seed, task.instruction)
        for wid, value in task.goal.items():  # the instruction names every value to set
            w = task.window.find(wid)
            assert w.label in task.instruction and (
                isinstance(value, bool) or value in task.instruction
            )
        assert (task.window.dialog is not None) == (name in DIALOG_TEMPLATES)


def test_helpers():
    rng = random.Random(0)
    assert all(other_value(rng, ["a", "b", "c"], "b") != "b" for _ in range(20))
    orders = {
        tuple(b.label for b in window_buttons(random.Random(s), "OK", "No")) for s in range(20)
    }
    assert orders == {("OK", "No"), ("No", "OK")}
    assert all(b.wid in ("primary", "secondary") for b in window_buttons(rng, "OK", "No"))
    drops = [dropdown(random.Random(s), "Size") for s in range(20)]
    assert {d.wid for d in drops} == {"size"} and {d.value() for d in drops} == set(
        DROPDOWNS["Size"]
    )


def test_toggles_draws_untaken_labels_tags_ids_and_names_the_flip():
    for seed in range(20):
        taken = set(random.Random(seed).sample(TOGGLES, 3))
        row, target, verb = toggles(random.Random(seed), boxes=3, tag="p1", taken=taken)
        assert [w.wid for w in row] == ["p1c0", "p1c1", "p1c2"]
        assert len({w.label for w in row}) == 3 and not {w.label for w in row} & taken
        assert target in row and verb == ("untick" if target.checked else "tick")
    # the fixed templates' default: two boxes, plain ids, any label
    row, _, _ = toggles(random.Random(0))
    assert [w.wid for w in row] == ["c0", "c1"]
