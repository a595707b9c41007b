"""State groups beside agent RL's episode groups (``rl.state_tasks``): each rollout also
plays n pool tasks once, samples ``group_size`` responses in every state the agent's own
episode reaches, rewards each for being the scripted expert's move there (+ format,
`lmforge.agents.state_groups.step_reward`) and trains them with advantages normalised within
the state (GRPO, Shao et al. 2024 eq. 3) — at most ``rl.state_max`` states per rollout, of
those whose responses' rewards differ:

    A_i = w · (r_i − mean_j r_j) / (std_j r_j + ε),   r_i = 1[a_i = expert's move] + f · 1[parses]

over the G responses j of one state, w = ``rl.state_weight``.

    scored, match = rollout_states(policy, pool, section, seed=0, rollout=3)

Why: an episode group gives one advantage to every step of an episode, so a list task failed
by one double-click on the wrong row, or a dropdown task failed by pressing Save after a
missed pick, pushes down the right steps before it as much as the wrong one, and only in
groups whose episodes differ. Replays beside the expert (BENCHMARKS.md, session 27) put most
training-template failures at single states: "'memo 7' is in view" said one scroll early or
late, a row grounded one off, "Everything is set" after a pick that missed. A state group
scores exactly that choice, in the agent's own states (the on-policy states of DAgger), with
the expert's move recomputed there (after a mistake: the move that repairs it); the episode
groups keep the task-success reward. The tasks are drawn from the same pool (those the
starting agent fails) by their own seeded stream (``agent-rl-states/{seed}/{rollout}``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from lmforge.agents.policy import VLMPolicy
from lmforge.agents.rl_examples import Scored, sample_examples
from lmforge.agents.state_groups import StateGroup, play_state_groups
from lmforge.agents.tasks import Task
from lmforge.align.grpo import grpo_advantages


def state_tasks(pool: Sequence[Task], count: int, seed: int, rollout: int) -> list[Task]:
    """``count`` tasks of ``pool`` (all of it when smaller) for rollout ``rollout`` of a run
    seeded ``seed``, drawn without replacement by the stream's own generator."""
    rng = random.Random(f"agent-rl-states/{seed}/{rollout}")
    return rng.sample(list(pool), min(count, len(pool)))


def informative(groups: Sequence[StateGroup], most: int, seed: int) -> list[StateGroup]:
    """The groups whose responses' rewards differ (the others have zero advantages and teach
    nothing), at most ``most`` of them (a seeded draw, in play order): a rollout's batch stays
    the size of a few episodes however long the trunk episodes run."""
    keep = [i for i, g in enumerate(groups) if max(g.rewards) > min(g.rewards)]
    if len(keep) > most:
        keep = sorted(random.Random(seed).sample(keep, most))
    return [groups[i] for i in keep]


def state_examples(
    groups: Sequence[StateGroup], group_size: int, weight: float = 1.0
) -> list[tuple[Scored, float]]:
    """Every response of ``groups`` as training examples (`sample_examples`: its decoded
    tokens and pointer choices, its sampled grounded clicks) with its state-normalised
    advantage × ``weight``."""
    if not groups:
        return []
    rewards = torch.tensor([r for g in groups for r in g.rewards])
    advantages = grpo_advantages(rewards, group_size).tolist()
    samples = [s for g in groups for s in g.samples]
    return [(example, weight * a) for s, a in zip(samples, advantages, strict=True)
            for example in sample_examples(s)]  # fmt: skip


def rollout_states(
    policy: VLMPolicy, pool: Sequence[Task], section: Any, seed: int, rollout: int
) -> tuple[list[tuple[Scored, float]], float]:
    """The state groups of rollout ``rollout``: ``section.state_tasks`` tasks of ``pool``
    (`state_tasks`) played once with ``section.group_size`` responses per state
    (`play_state_groups`, up to ``max_steps`` states, ``format_weight``); of their states,
    ``state_max`` at most whose rewards differ (`informative`) as `state_examples`
    (× ``state_weight``), and the share of all responses that were the expert's move (nothing
    and 0.0 when ``state_tasks`` is 0)."""
    s = section
    if not s.state_tasks:
        return [], 0.0
    picks = state_tasks(pool, s.state_tasks, seed, rollout)
    groups, _ = play_state_groups(policy, picks, s.group_size, s.max_steps, s.format_weight)
    matched = sum(r >= 1 for g in groups for r in g.rewards)
    total = sum(len(g.rewards) for g in groups)
    kept = informative(groups, s.state_max, seed * 7919 + rollout)
    return state_examples(kept, s.group_size, s.state_weight), matched / max(1, total)


__all__ = ["informative", "rollout_states", "state_examples", "state_tasks"]
