"""Tests for lmforge.agents.rl_states: a rollout's state tasks are its own seeded draw of the
pool; every response of a state group becomes a training example with its advantage
normalised within its state (recomputed here from GRPO's equation) × the weight; the share of
expert moves is reported; nothing is played when ``rl.state_tasks`` is 0."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from lmforge.agents.actions import format_response
from lmforge.agents.expert import expert_step
from lmforge.agents.policy import PolicySample
from lmforge.agents.rl_config import AgentRLSection
from lmforge.agents.rl_states import informative, rollout_states, state_examples, state_tasks
from lmforge.agents.state_groups import StateGroup, play_state_groups
from lmforge.agents.tasks import sample_task

POOL = [sample_task(s, template=t) for s in range(4) for t in ("radio_apply", "list_open")]


class ThirdExpert:
    """Every third request of a call answers as the expert would; the others write nothing
    valid (reward 0) — one decoded token each, scored by the engine."""

    def sample(self, contexts):
        out = []
        for i, c in enumerate(contexts):
            step = expert_step(c.env.task, c.env.window)
            text = format_response(step.thought, step.action) if i % 3 == 0 else "no action"
            out.append(PolicySample(text, [1, 2], [3], [-0.5], torch.zeros(0), torch.zeros(0)))
        return out


def test_state_tasks_are_the_rollouts_own_draw_of_the_pool():
    picks = state_tasks(POOL, 3, seed=1, rollout=4)
    assert picks == state_tasks(POOL, 3, seed=1, rollout=4) and len(picks) == 3
    assert len({id(t) for t in picks}) == 3  # without replacement
    assert all(t in POOL for t in picks)
    draws = {tuple(t.instruction for t in state_tasks(POOL, 3, 1, r)) for r in range(6)}
    assert len(draws) > 1  # another rollout, another draw
    assert sorted(t.instruction for t in state_tasks(POOL, 50, 0, 0)) == sorted(
        t.instruction for t in POOL
    )


def test_state_examples_carry_the_state_normalised_advantage():
    groups, _ = play_state_groups(ThirdExpert(), POOL[:2], group_size=3, max_steps=4)
    scored = state_examples(groups, 3, weight=2.0)
    assert len(scored) == 3 * len(groups)  # one example per response (no grounded clicks)
    for g, start in zip(groups, range(0, len(scored), 3), strict=True):
        r = g.rewards
        assert r == pytest.approx([1.1, 0.0, 0.0])
        mean = sum(r) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)  # Bessel-corrected
        for x, (_, adv) in zip(r, scored[start : start + 3], strict=True):
            assert adv == pytest.approx(2.0 * (x - mean) / (std + 1e-4), abs=1e-5)
        (example, old, choices) = scored[start][0]
        assert example.input_ids == [1, 2, 3] and choices == []
        assert math.isnan(old[0]) and old[-1] == -0.5
    assert state_examples([], 3) == []


def test_rollout_states_play_the_sections_tasks():
    section = AgentRLSection(state_tasks=2, group_size=3, max_steps=4, state_weight=0.5,
                             state_max=2)  # fmt: skip
    scored, match = rollout_states(ThirdExpert(), POOL, section, seed=2, rollout=1)
    groups, _ = play_state_groups(ThirdExpert(), state_tasks(POOL, 2, 2, 1), 3, 4)
    assert len(groups) > 2 and match == pytest.approx(1 / 3)  # one in three: the expert's move
    kept = informative(groups, 2, 2 * 7919 + 1)
    assert len(scored) == 6  # two states' three responses
    assert [a for _, a in scored] == [a for _, a in state_examples(kept, 3, 0.5)]
    assert rollout_states(ThirdExpert(), POOL, replace(section, state_tasks=0), 2, 1) == ([], 0.0)


def test_informative_keeps_states_whose_rewards_differ_up_to_the_cap():
    task = POOL[0]
    flat = StateGroup(task, [], [1.1, 1.1, 1.1])
    split = [StateGroup(task, [], [1.1, 0.0, float(i)]) for i in range(5)]
    groups = [flat, *split, flat]
    assert informative(groups, 10, 0) == split  # the flat ones drop out, play order kept
    two = informative(groups, 2, 0)
    assert len(two) == 2 and two == informative(groups, 2, 0)
    assert [split.index(g) for g in two] == sorted(split.index(g) for g in two)
    assert {id(g) for s in range(8) for g in informative(groups, 2, s)} == {id(g) for g in split}
    assert informative([flat], 4, 0) == []
