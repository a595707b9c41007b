"""Task templates and splits: held-out layouts and templates are disjoint from training,
sampling is a pure function of the seed, and every template's success check rejects wrong
end states (a missing change, a stray change, the wrong final event)."""

from __future__ import annotations

import pytest

from lmforge.agents.task_templates import (
    COMPOSED_TEMPLATES,
    HELDOUT_TEMPLATES,
    TEMPLATES,
    TRAIN_TEMPLATES,
)
from lmforge.agents.tasks import (
    FREE_TEXT,
    HELDOUT_LAYOUTS,
    LAYOUTS,
    SPLITS,
    TRAIN_LAYOUTS,
    sample_task,
    split_choices,
    task_for_instruction,
    task_success,
)
from lmforge.agents.widgets import Checkbox, Dropdown, RadioGroup, TextField


def test_splits_are_disjoint_and_cover_everything():
    assert set(TRAIN_TEMPLATES).isdisjoint(HELDOUT_TEMPLATES) and HELDOUT_TEMPLATES
    assert set(TRAIN_TEMPLATES) | set(HELDOUT_TEMPLATES) == set(TEMPLATES)
    assert set(TRAIN_LAYOUTS).isdisjoint(HELDOUT_LAYOUTS) and HELDOUT_LAYOUTS
    assert sorted(TRAIN_LAYOUTS + HELDOUT_LAYOUTS) == sorted(LAYOUTS)
    # every theme and every arrangement is seen in training (held out are combinations)
    assert {t for t, _ in TRAIN_LAYOUTS} == {t for t, _ in LAYOUTS}
    assert {a for _, a in TRAIN_LAYOUTS} == {a for _, a in LAYOUTS}


def test_sampled_tasks_respect_their_split():
    for seed in range(150):
        train = sample_task(seed, "train")
        assert train.template in TRAIN_TEMPLATES and train.layout in TRAIN_LAYOUTS
        lay = sample_task(seed, "heldout_layout")
        assert lay.template in TRAIN_TEMPLATES and lay.layout in HELDOUT_LAYOUTS
        assert sample_task(seed, "heldout_template").template in HELDOUT_TEMPLATES
        h = sample_task(seed, "heldout")
        assert h.template in HELDOUT_TEMPLATES or h.layout in HELDOUT_LAYOUTS
    with pytest.raises(ValueError, match="unknown split"):
        split_choices("test")
    with pytest.raises(ValueError, match="unknown task template"):
        sample_task(0, template="fly")
    assert set(SPLITS) == {"train", "heldout_layout", "heldout_template", "heldout"}


def test_sampling_is_a_function_of_the_seed():
    a, b = sample_task(5, "heldout"), sample_task(5, "heldout")
    assert a.instruction == b.instruction and a.goal == b.goal and a.window == b.window
    assert len({sample_task(s).instruction for s in range(40)}) > 30


def test_switched_messages_change_only_the_message_and_the_expert_still_solves_them():
    """``messages``: a training task opens with its message switched (added where the
    template has none, removed where it has one); instruction, widgets, layout and goal are
    the ``messages=0`` task's, and the scripted expert solves it (closing only a message that
    is there). Held-out splits refuse the option."""
    from lmforge.agents.actions import format_response
    from lmforge.agents.env import GUIEnv
    from lmforge.agents.expert import expert_step
    from lmforge.agents.tasks import UNDER_A_MESSAGE

    seen = {"added": 0, "removed": 0}
    for seed in range(60):
        plain = sample_task(seed, "train", composed=True)
        switched = sample_task(seed, "train", composed=True, messages=1.0)
        assert sample_task(seed, "train", composed=True, messages=0.0).window == plain.window
        assert (switched.instruction, switched.goal, switched.layout, switched.template) == (
            plain.instruction,
            plain.goal,
            plain.layout,
            plain.template,
        )
        under = plain.template in UNDER_A_MESSAGE
        assert (plain.window.dialog is not None) == under != (switched.window.dialog is not None)
        seen[switched.meta["message"]] += 1
        assert switched.window.widgets == plain.window.widgets
        env = GUIEnv(max_steps=20)
        env.reset(options={"task": switched})
        first, done, reward = expert_step(switched, env.window), False, 0.0
        assert ("message" in first.thought) == (not under)
        while not done:
            step = expert_step(switched, env.window)
            _, reward, terminated, truncated, _ = env.step(
                format_response(step.thought, step.action)
            )
            done = terminated or truncated
        assert reward == 1.0, (seed, switched.instruction)
    assert min(seen.values()) >= 3
    share = sum("message" in sample_task(s, "train", messages=0.3).meta for s in range(400))
    assert 80 <= share <= 160
    for split in ("heldout", "heldout_layout", "heldout_template"):
        with pytest.raises(ValueError, match="training-only"):
            sample_task(0, split, messages=0.5)
    with pytest.raises(ValueError, match="messages"):
        sample_task(0, "train", messages=1.5)


def broken_versions(task):
    """Windows in wrong end states: (description, window)."""
    expected = task.expected_values()
    out = []
    if task.goal:  # the goal left undone, the final event done
        win = task.fresh_window()
        win.events.append(task.final)
        out.append(("goal not reached", win))
    win = task.fresh_window()  # goal reached, but no final event / the wrong one
    for wid, value in task.goal.items():
        set_value(win.find(wid), value)
    out.append(("no final event", win))
    wrong = task.fresh_window()
    for wid, value in task.goal.items():
        set_value(wrong.find(wid), value)
    wrong.events.append(("press", "secondary") if task.final[0] == "press" else ("finished", ""))
    out.append(("wrong final event", wrong))
    stray = task.fresh_window()  # goal reached and final event, but a stray change
    for wid, value in task.goal.items():
        set_value(stray.find(wid), value)
    others = [w for w in stray.walk() if w.wid in expected and w.wid not in task.goal]
    if others:
        w = others[0]
        set_value(w, (not w.checked) if isinstance(w, Checkbox) else
                  w.text + "x" if isinstance(w, TextField) else
                  next(o for o in w.options if o != w.value()))  # fmt: skip
        stray.events.append(task.final)
        out.append(("stray change", stray))
    return out


def set_value(w, value):
    if isinstance(w, Checkbox):
        w.checked = value
    elif isinstance(w, TextField):
        w.text = value
    elif isinstance(w, (Dropdown, RadioGroup)):
        w.selected = w.options.index(value)


@pytest.mark.parametrize("template", sorted(TEMPLATES) + sorted(COMPOSED_TEMPLATES))
def test_success_check_accepts_the_goal_and_rejects_wrong_end_states(template):
    for seed in range(5):
        task = sample_task(seed, "heldout", template)
        right = task.fresh_window()
        for wid, value in task.goal.items():
            set_value(right.find(wid), value)
        right.events.append(task.final)
        assert task_success(task, right)
        for what, win in broken_versions(task):
            assert not task_success(task, win), (template, seed, what)


def test_task_for_instruction_template_exact_and_free_text():
    named = task_for_instruction("list_open", seed=4)
    assert named.instruction == sample_task(4, "heldout", "list_open").instruction
    # a template's own instruction (case, spaces, final stop aside) keeps its success check
    own = sample_task(9, "heldout", "dropdown_save")
    task = task_for_instruction("  " + own.instruction.upper() + ".", seed=2)
    assert (task.template, task.goal, task.final) == (own.template, own.goal, own.final)
    assert not task.meta.get("free_text")
    # free text: the window whose labels match it, no goal, a final event nothing matches
    for text, template in [("Tick Remember me, then press Sign in", "login_remember"),
                           ("open invoice 7 please", "list_open")]:  # fmt: skip
        task = task_for_instruction(text, seed=0)
        assert task.template == template and task.instruction == text
        assert task.meta["free_text"] and task.goal == {} and task.final == FREE_TEXT
        win = task.fresh_window()
        win.events.append(("finished", ""))
        assert not task_success(task, win)
    # a composed (training-only) template's name draws that template's task too
    assert task_for_instruction("tab_radio", seed=1).template == "tab_radio"
    with pytest.raises(ValueError, match="empty instruction"):
        task_for_instruction("  ")


def test_goal_progress_is_the_share_of_goal_values_held():
    from lmforge.agents.env import GUIEnv
    from lmforge.agents.expert import expert_step
    from lmforge.agents.tasks import goal_progress

    task = sample_task(4, template="profile_edit")  # two goal values: the name and the plan
    env = GUIEnv(width=task.window.width, height=task.window.height)
    env.reset(options={"task": task})
    seen = [goal_progress(task, env.window)]
    done = False
    while not done:
        _, reward, terminated, truncated, _ = env.step(expert_step(task, env.window).action)
        seen.append(goal_progress(task, env.window))
        done = terminated or truncated
    assert reward == 1.0 and seen[-1] == 1.0 and seen[0] < 1.0
    assert all(p in (0.0, 0.5, 1.0) for p in seen) and 0.5 in seen  # one value at a time
    held = {k: v == task.goal[k] for k, v in env.window.values().items() if k in task.goal}
    assert sum(held.values()) / len(task.goal) == seen[-1]
    listing = sample_task(0, template="list_open")
    assert listing.goal == {} and goal_progress(listing, listing.window) == 0.0  # no goal
