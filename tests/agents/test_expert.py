"""The scripted expert solves every task of every template, on training and held-out
layouts (which also checks the success checks can be met), with short valid thoughts, and
recovers from injected mistakes; with ``drag`` it drags far rows into view, and every release
point of its drop range shows the row."""

from __future__ import annotations

import random

import pytest

from lmforge.agents.actions import MAX_THOUGHT, Drag, format_response
from lmforge.agents.agent_data import mistake_step
from lmforge.agents.env import GUIEnv
from lmforge.agents.expert import DRAG_ABOVE_ROWS, expert_step
from lmforge.agents.task_templates import (
    COMPOSED_TEMPLATES,
    HELDOUT_TEMPLATES,
    TEMPLATES,
    TRAIN_TEMPLATES,
)
from lmforge.agents.tasks import sample_task

SEEDS = 12


def run_expert(task, mistakes: float = 0.0, seed: int = 0, drag: bool = False):
    env = GUIEnv(max_steps=40)
    env.reset(options={"task": task})
    rng = random.Random(seed)
    thoughts, done, reward = [], False, 0.0
    while not done:
        wrong = mistake_step(task, env.window, rng, drag) if rng.random() < mistakes else None
        step = wrong[0] if wrong else expert_step(task, env.window, drag=drag)
        text = format_response(step.thought, step.action)  # valid by construction
        thoughts.append(step.thought)
        _, reward, terminated, truncated, info = env.step(text)
        assert not info["invalid_action"], info
        done = terminated or truncated
    return reward, env.steps, thoughts


@pytest.mark.parametrize("split", ["train", "heldout_layout", "heldout_template"])
def test_expert_solves_every_task(split):
    templates = TRAIN_TEMPLATES if split != "heldout_template" else HELDOUT_TEMPLATES
    if split == "train":
        templates = (*templates, *COMPOSED_TEMPLATES)
    for template in templates:
        for seed in range(SEEDS):
            task = sample_task(seed, split, template)
            reward, steps, thoughts = run_expert(task)
            assert reward == 1.0, (split, template, seed, task.instruction)
            assert all(1 <= len(t) <= MAX_THOUGHT for t in thoughts)


def test_expert_recovers_from_mistakes():
    solved = 0
    for seed in range(40):
        for task in (sample_task(seed, "heldout"), sample_task(seed, "train", composed=True)):
            reward, steps, _ = run_expert(task, mistakes=0.3, seed=seed)
            solved += reward == 1.0
    assert solved == 80


def test_expert_first_step_per_template():
    """Spot checks of the plan: what the expert does first on a fresh window."""
    first = {t: expert_step(sample_task(0, "heldout", t), sample_task(0, "heldout", t).fresh_window())
             for t in TEMPLATES}  # fmt: skip
    assert "message" in first["dialog_tick"].thought and first["dialog_tick"].target == "close"
    assert type(first["list_open"].action).__name__ in ("Scroll", "LeftDouble")
    assert "tab" in first["tab_checkbox"].thought
    assert first["search_submit"].target == "Search"


def test_expert_with_drags_solves_every_task_and_drags_only_when_asked():
    dragged = 0
    train = (*TRAIN_TEMPLATES, *COMPOSED_TEMPLATES)
    for split, templates in (("train", train), ("heldout_template", HELDOUT_TEMPLATES)):
        for template in templates:
            for seed in range(SEEDS):
                task = sample_task(seed, split, template)
                reward, _, thoughts = run_expert(task, mistakes=0.2, seed=seed, drag=True)
                assert reward == 1.0, (split, template, seed, task.instruction)
                assert all(1 <= len(t) <= MAX_THOUGHT for t in thoughts)
                dragged += any("drag the scrollbar" in t for t in thoughts)
                _, _, plain = run_expert(task, seed=seed)
                assert not any("drag" in t for t in plain)
    assert dragged >= 3


def test_every_release_in_the_drop_range_shows_the_row():
    from lmforge.agents.widgets import ListView

    checked = 0
    for seed in range(60):
        task = sample_task(seed, "train", "list_open")
        step = expert_step(task, task.fresh_window(), drag=True)
        if not isinstance(step.action, Drag):
            continue
        assert "far" in step.thought and step.drop_box is not None
        a, (x0, y0, x1, y1) = step.action, step.drop_box
        assert y0 <= a.y2 <= y1 and x0 <= a.x1 <= x1  # its own release, on the scrollbar
        own = GUIEnv()
        own.reset(options={"task": task})
        own.step(a)  # a far row: more rows than two scrolls would move
        assert (
            next(w for w in own.window.walk() if isinstance(w, ListView)).offset > DRAG_ABOVE_ROWS
        )
        for y2 in range(y0, y1 + 1):
            env = GUIEnv()
            env.reset(options={"task": task})
            lv = next(w for w in env.window.walk() if isinstance(w, ListView))
            before = lv.offset
            env.step(f"drag({a.x1},{a.y1},{a.x2},{y2})")
            index = lv.items.index(task.final[1])
            assert lv.row_box(index) is not None, (seed, y2)
            assert lv.offset != before
            checked += 1
    assert checked >= 50
