"""The scripted expert solves every task of every template, on training and held-out
layouts (which also checks the success checks can be met), with short valid thoughts, and
recovers from injected mistakes."""

from __future__ import annotations

import random

import pytest

from lmforge.agents.actions import MAX_THOUGHT, format_response
from lmforge.agents.agent_data import mistake_step
from lmforge.agents.env import GUIEnv
from lmforge.agents.expert import expert_step
from lmforge.agents.tasks import HELDOUT_TEMPLATES, TEMPLATES, TRAIN_TEMPLATES, sample_task

SEEDS = 12


def run_expert(task, mistakes: float = 0.0, seed: int = 0):
    env = GUIEnv(max_steps=40)
    env.reset(options={"task": task})
    rng = random.Random(seed)
    thoughts, done, reward = [], False, 0.0
    while not done:
        wrong = mistake_step(task, env.window, rng) if rng.random() < mistakes else None
        step = wrong[0] if wrong else expert_step(task, env.window)
        text = format_response(step.thought, step.action)  # valid by construction
        thoughts.append(step.thought)
        _, reward, terminated, truncated, info = env.step(text)
        assert not info["invalid_action"], info
        done = terminated or truncated
    return reward, env.steps, thoughts


@pytest.mark.parametrize("split", ["train", "heldout_layout", "heldout_template"])
def test_expert_solves_every_task(split):
    templates = TRAIN_TEMPLATES if split != "heldout_template" else HELDOUT_TEMPLATES
    for template in templates:
        for seed in range(SEEDS):
            task = sample_task(seed, split, template)
            reward, steps, thoughts = run_expert(task)
            assert reward == 1.0, (split, template, seed, task.instruction)
            assert all(1 <= len(t) <= MAX_THOUGHT for t in thoughts)


def test_expert_recovers_from_mistakes():
    solved = 0
    for seed in range(40):
        task = sample_task(seed, "heldout")
        reward, steps, _ = run_expert(task, mistakes=0.3, seed=seed)
        solved += reward == 1.0
    assert solved == 40


def test_expert_first_step_per_template():
    """Spot checks of the plan: what the expert does first on a fresh window."""
    first = {t: expert_step(sample_task(0, "heldout", t), sample_task(0, "heldout", t).fresh_window())
             for t in TEMPLATES}  # fmt: skip
    assert "message" in first["dialog_tick"].thought and first["dialog_tick"].target == "close"
    assert type(first["list_open"].action).__name__ in ("Scroll", "LeftDouble")
    assert "tab" in first["tab_checkbox"].thought
    assert first["search_submit"].target == "Search"
