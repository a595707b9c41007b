"""Tests for lmforge.agents.rl_tasks: the fresh pool, and start states from the expert."""

from __future__ import annotations

from dataclasses import replace

from lmforge.agents.agent_data import expert_trajectory
from lmforge.agents.rl_config import AgentRLSection
from lmforge.agents.rl_tasks import expert_start_states, select_tasks
from lmforge.agents.task_clauses import CLAUSE_TEMPLATES
from lmforge.agents.task_templates import COMPOSED_TEMPLATES
from lmforge.agents.tasks import TRAIN_LAYOUTS, sample_task


def test_a_fresh_pool_holds_no_task_of_the_sft_data():
    """The agent data's tasks are seeded 0, 1, … (`make_agent_dataset`); RL's fresh pool is
    not — its tasks are new to the SFT model — while ``fresh_pool=false`` is exactly them."""
    section = AgentRLSection(pool_tasks=30, failed_only=False)
    sft_tasks = {repr(sample_task(i, "train")) for i in range(300)}
    fresh = select_tasks(None, None, None, section, seed=0)
    assert len(fresh) == 30 and not sft_tasks & {repr(t) for t in fresh}
    assert len({repr(t) for t in fresh}) == 30
    same = select_tasks(None, None, None, replace(section, fresh_pool=False), seed=0)
    assert [repr(t) for t in same] == [repr(sample_task(i, "train")) for i in range(30)]
    # rl.composed: the pool draws the training-only composed templates too
    mixed = select_tasks(None, None, None, replace(section, composed=True), seed=0)
    assert (
        {t.template for t in mixed} - {t.template for t in fresh}
        == {t.template for t in mixed if t.template in COMPOSED_TEMPLATES}
        != set()
    )
    # rl.clauses: a share of the pool are clause tasks
    clauses = select_tasks(None, None, None, replace(section, clauses=1.0), seed=0)
    assert all(t.template in CLAUSE_TEMPLATES for t in clauses)
    # rl.messages: a share of the pool's tasks open with their message switched
    switched = select_tasks(None, None, None, replace(section, messages=1.0), seed=0)
    assert [t.instruction for t in switched] == [t.instruction for t in fresh]
    assert all((s.window.dialog is None) != (t.window.dialog is None)
               for s, t in zip(switched, fresh, strict=True))  # fmt: skip
    # rl.templates: the pool takes the named templates in turn, on training layouts only
    named = replace(section, templates=["list_open", "radio_apply"])
    special = select_tasks(None, None, None, named, seed=0)
    assert [t.template for t in special] == ["list_open", "radio_apply"] * 15
    assert {t.layout for t in special} <= set(TRAIN_LAYOUTS)
    assert not sft_tasks & {repr(t) for t in special} and len({repr(t) for t in special}) == 30
    assert [repr(t) for t in select_tasks(None, None, None, named, seed=0)] == [
        repr(t) for t in special
    ]


def test_expert_start_states():
    tasks = [sample_task(s, "train") for s in range(40)]
    lengths = [len(expert_trajectory(t, 9).steps) for t in tasks]
    assert expert_start_states(tasks, 0.0, 8, seed=1) == [0] * 40
    every = expert_start_states(tasks, 1.0, 8, seed=1)
    assert all(1 <= k < n if n > 1 else k == 0 for k, n in zip(every, lengths, strict=True))
    assert len(set(every)) > 2 and expert_start_states(tasks, 1.0, 8, seed=1) == every
    assert expert_start_states(tasks, 1.0, 8, seed=2) != every
    half = expert_start_states(tasks, 0.5, 8, seed=1)
    assert 8 <= sum(k > 0 for k in half) <= 32
