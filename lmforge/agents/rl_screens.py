"""A grounding stream beside agent RL's episodes (``rl.screen_questions``): each rollout also
asks n grounding questions on fresh random training windows and trains the pointer on them as
grounding bandits — K points sampled per question, each rewarded 1 inside the element it asks
about (GUI-R1 / UI-R1's click reward in GRPO's form, `lmforge.agents.rl_examples.grounding_bandit`).

    questions = screen_questions(seed=0, rollout=3, count=32)
    bandits, hit_rate = screen_bandits(policy, questions)   # [(scored example, advantages)]

Why: in episodes the grounder is asked about an open list's options once per dropdown task and
about rows only in list tasks, and a failed click ends most of those episodes, so the episode
bandit (``rl.ground_samples``) sees few of the questions the agent gets wrong (held-out
grounding of options 0.56–0.61, rows 0.74; BENCHMARKS.md, session 26). Random windows
(`lmforge.agents.random_screens`: no template's layout, so held-out layouts stay held out) with
a list open at ``open_rate`` ask about every element kind at every place; questions whose K
points all agree drop out (zero advantages), so the stream trains where the pointer is unsure.
The windows come from their own seeded stream (``agent-rl-screens/…``), which no SFT data
uses. ``focus`` (``rl.screen_focus``) asks that share of the questions about list rows and
options, the kinds the agent's episodes miss most.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmforge.agents.agent_data import covered, screen_elements
from lmforge.agents.grounded import grounding_query
from lmforge.agents.policy import GroundedChoice, VLMPolicy
from lmforge.agents.random_screens import KIND_WEIGHTS, random_window
from lmforge.agents.render import render_window
from lmforge.agents.rl_examples import Scored, click_rewards, grounding_bandit
from lmforge.agents.widgets import Box


@dataclass(frozen=True)
class ScreenQuestion:
    """One grounding question on a random window: its screenshot, the element's kind and
    label ("Click on the {kind} '{label}'.") and the boxes of every shown element with that
    kind and label (a click inside any of them answers it)."""

    screenshot: np.ndarray
    kind: str
    label: str
    boxes: tuple[Box, ...]


# a focused question's window: lists four times as often as `KIND_WEIGHTS` draws them
FOCUS_WEIGHTS = {**KIND_WEIGHTS, "list": 4 * KIND_WEIGHTS["list"]}
FOCUS_KINDS = ("row", "option")  # what a focused question asks about


def screen_questions(
    seed: int, rollout: int, count: int, width: int = 128, height: int = 128,
    open_rate: float = 0.5, focus: float = 0.0,
) -> list[ScreenQuestion]:  # fmt: skip
    """``count`` questions for rollout ``rollout`` of a run seeded ``seed``: question j on its
    own random window (a dropdown open with probability ``open_rate``; the stream's next
    window when one has nothing to click), about one of the window's uncovered elements drawn
    uniformly (`screen_elements`, `covered`). With probability ``focus`` the question is
    *focused*: its window draws lists four times as often (`FOCUS_WEIGHTS`) and it asks about
    a list row or an option (`FOCUS_KINDS`: the kinds the agent's episodes miss most; the
    next window when one shows neither)."""
    out = []
    for j in range(count):
        rng, elements = random.Random(f"agent-rl-screens/{seed}/{rollout}/{j}"), []
        focused = focus > 0 and rng.random() < focus  # (no draw at focus 0: streams unchanged)
        while not elements:  # (a window of headings only has nothing to click: the next)
            win = random_window(rng, width, height, dropdown_rate=open_rate,
                                weights=FOCUS_WEIGHTS if focused else None)  # fmt: skip
            shown = [x for x in screen_elements(win) if not covered(win, x)]
            elements = [x for x in shown if not focused or x.kind in FOCUS_KINDS]
        e = rng.choice(elements)
        boxes = tuple(x.box for x in shown if (x.kind, x.label) == (e.kind, e.label))
        out.append(ScreenQuestion(np.asarray(render_window(win)), e.kind, e.label, boxes))
    return out


@torch.no_grad()
def screen_choice(
    policy: VLMPolicy, q: ScreenQuestion, generator: torch.Generator
) -> GroundedChoice:
    """The policy's pointer on question ``q`` (`grounding_query`): one point sampled as an
    episode's grounded click is (`VLMPolicy.choose_point`) and ``ground_samples`` − 1 more from
    the same distribution, recorded as an episode's (`VLMPolicy.grounded_choice`)."""
    query = grounding_query(policy.tokenizer, policy.processor, q.kind, q.label, q.screenshot)
    logits, cells = policy.pointer_logits(*query, 0)
    k, point = policy.choose_point(logits, cells, generator)
    return policy.grounded_choice(query, logits, cells, k, point, generator)


def screen_bandits(
    policy: VLMPolicy, questions: Sequence[ScreenQuestion], weight: float = 1.0, seed: int = 0
) -> tuple[list[tuple[Scored, list[float]]], float]:
    """The grounding bandits of ``questions`` (those whose points' rewards differ), their
    advantages × ``weight``, and the share of all sampled points that landed inside their
    element (the stream's sampled grounding accuracy)."""
    generator = torch.Generator().manual_seed(seed)
    bandits, hits, points = [], 0.0, 0
    for q in questions:
        g = screen_choice(policy, q, generator)
        rewards = click_rewards(g, q.boxes)
        hits, points = hits + sum(rewards), points + len(rewards)
        if (b := grounding_bandit(g, q.boxes)) is not None:
            bandits.append((b[0], [weight * a for a in b[1]]))
    return bandits, hits / max(1, points)


def rollout_screens(
    policy: VLMPolicy, section: Any, seed: int, rollout: int
) -> tuple[list[tuple[Scored, list[float]]], float]:
    """`screen_bandits` of rollout ``rollout``'s ``section.screen_questions`` questions
    (`lmforge.agents.rl_config.AgentRLSection`: ``screen``, ``screen_open_rate``, ``screen_focus``,
    ``ground_weight``)."""
    s = section
    questions = screen_questions(seed, rollout, s.screen_questions, s.screen, s.screen,
                                 s.screen_open_rate, s.screen_focus)  # fmt: skip
    return screen_bandits(policy, questions, s.ground_weight, seed * 7919 + rollout)


__all__ = [
    "FOCUS_KINDS",
    "FOCUS_WEIGHTS",
    "ScreenQuestion",
    "rollout_screens",
    "screen_bandits",
    "screen_choice",
    "screen_questions",
]
