"""What online RL practises on: the task pool (fresh seeds the SFT data never held, by
default only the tasks the starting agent fails greedily) and where a group's episodes start
(the initial screen, or a state of the scripted expert's own episode).

    tasks = select_tasks(model, tokenizer, processor, config.rl, seed=0)
    starts = expert_start_states(tasks, share=0.5, max_steps=8, seed=3)   # [0, 2, 0, 1, …]

A start k > 0 means the scripted expert plays the episode's first k steps and the policy
goes on from there with that history in its context (`lmforge.agents.rollout.open_episode`):
a reverse curriculum from demonstration states (Salimans & Chen 2018, "Learning
Montezuma's Revenge from a Single Demonstration"). A task the policy fails from its first
screen gives groups whose rewards all agree (zero GRPO advantages); started nearer the end
the same task's groups differ, so its later steps are trained.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lmforge.agents.agent_data import expert_trajectory
from lmforge.agents.policy import VLMPolicy
from lmforge.agents.rollout import run_episodes
from lmforge.agents.tasks import Task, sample_task
from lmforge.vision.processor import ImageProcessor

POOL_TOP = 2**31 - 1  # a fresh pool's first task seed (`select_tasks`)


def select_tasks(
    model: Any, tokenizer: Any, processor: ImageProcessor, r: Any, seed: int
) -> list[Task]:
    """The pool of ``r.split`` tasks (``r``: an `lmforge.agents.rl_config.AgentRLSection`), or
    (``failed_only``) those the model fails greedily (the whole pool if it fails none). The
    agent data's tasks are seeded upward from 0 (`make_agent_dataset`: ``seed · 1,000,003 +
    i``); a ``fresh_pool`` counts down from 2³¹ − 1, so RL practises on tasks SFT never
    showed, not on its own training tasks. ``r.templates`` (names of the split's templates):
    the pool's tasks take them in turn, each on the split's layouts (a specialist's pool, as
    rewarded soups train one member per reward). ``r.composed``: the training split's pool draws
    the composed templates too, ``r.clauses`` = p: a share p of clause tasks, ``r.messages``
    = q: a share q of the tasks open with their message switched (`sample_task`)."""
    seeds = [POOL_TOP - seed * 1_000_003 - i if r.fresh_pool else seed + i
             for i in range(r.pool_tasks)]  # fmt: skip
    names = list(r.templates) or [None]
    pool = [sample_task(s, r.split, names[i % len(names)], r.screen, r.screen, r.composed,
                        r.clauses, r.messages) for i, s in enumerate(seeds)]  # fmt: skip
    if not r.failed_only:
        return pool
    policy = VLMPolicy(model, tokenizer, processor, (r.screen, r.screen), r.history, r.max_new_tokens,
                       temperature=0.0, constrained=r.constrained, typing=r.typing,
                       thoughts=r.thoughts, clicks=r.clicks)  # fmt: skip
    failed = [run.task for run in run_episodes(policy, pool, r.max_steps) if not run.record.success]
    return failed or pool


def expert_start_states(
    tasks: Sequence[Task], share: float, max_steps: int, seed: int
) -> list[int]:
    """Per task, the scripted expert's steps before its episodes start: with probability
    ``share`` a k uniform in 1 … n − 1 (n: the expert's episode length, counted up to
    ``max_steps`` + 1), else 0 (also when n = 1). Deterministic in ``seed``."""
    rng = random.Random(seed)
    starts = []
    for task in tasks:
        k = 0
        if rng.random() < share:
            n = len(expert_trajectory(task, max_steps + 1).steps)
            k = rng.randint(1, n - 1) if n > 1 else 0
        starts.append(k)
    return starts


__all__ = [
    "POOL_TOP",
    "expert_start_states",
    "select_tasks",
]
