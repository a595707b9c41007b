"""The examples online RL trains on (`lmforge.agents.rl`): what the engine decoded in each
step, token-exactly, and — with ``rl.train_grounded`` — each grounded click's sampled point in
the grounding question it was chosen from.

    example, old_logprobs, choices = sample_example(policy_sample)
    scored = step_examples(episode_run)      # every step's examples, grounded clicks too
    bandits = bandit_examples(episode_run)   # rl.ground_samples: each click's group of points

An example comes with the engine's log-prob of each of its tokens (NaN where nothing was
scored) and its pointer choices ``(k, log p_old(k))``; `token_rows` places per-token values
where `lmforge.vision.vlm_data.collate_rows` packs the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lmforge.agents.policy import GroundedChoice, PolicySample
from lmforge.agents.rollout import EpisodeRun
from lmforge.agents.widgets import Box, box_contains
from lmforge.align.grpo import grpo_advantages
from lmforge.models.loss import IGNORE_INDEX
from lmforge.vision.vlm_data import MultimodalExample

# an example, its tokens' old log-probs, its pointer choices (chosen token, old log-prob)
Scored = tuple[MultimodalExample, list[float], list[tuple[int, float]]]


def sample_example(s: PolicySample) -> Scored:
    """The example the engine decoded in one step: prompt ids then the response's ids,
    labels on the sampled ids only (not on what a pointer policy spliced in), the prompt's
    images, and the pointer queries (positions, images; boxes unused, zero) — the engine's
    log-prob of each token of the example (NaN on the prompt and where the engine scored
    nothing), and per pointer query its chosen token and old log-prob ``(k, log p_old(k))``."""
    ids = s.prompt_ids + s.token_ids
    labels = [IGNORE_INDEX] * len(s.prompt_ids) + [
        t if kept else IGNORE_INDEX for t, kept in zip(s.token_ids, s.sampled, strict=True)
    ]
    old = [math.nan] * len(s.prompt_ids) + [math.nan if lp is None else lp for lp in s.logprobs]
    example = MultimodalExample(ids, labels, s.pixel_values, s.image_grid_thw,
                                [p.position for p in s.pointers], [p.image for p in s.pointers],
                                [(0.0, 0.0, 0.0, 0.0)] * len(s.pointers))  # fmt: skip
    return example, old, [(p.index, p.logprob) for p in s.pointers]


def grounded_example(g: GroundedChoice) -> Scored:
    """A sampled grounded click as an example: the grounding question's ids and image, no
    labels (no language-model term) and its one pointer query and choice."""
    c = g.choice
    example = MultimodalExample(g.ids, [IGNORE_INDEX] * len(g.ids), g.pixel_values,
                                g.image_grid_thw, [c.position], [c.image], [(0.0, 0.0, 0.0, 0.0)])  # fmt: skip
    return example, [math.nan] * len(g.ids), [(c.index, c.logprob)]


def click_rewards(g: GroundedChoice, boxes: Sequence[Box]) -> list[float]:
    """1 for each point of the grounding bandit's group (the clicked choice, then its
    ``alternatives``) inside one of ``boxes`` (where the thought's element lies), else 0."""
    points = [g.choice.point, *(point for _, _, point in g.alternatives)]
    return [float(any(box_contains(b, x, y) for b in boxes)) for x, y in points]


def grounding_bandit(g: GroundedChoice, boxes: Sequence[Box]) -> tuple[Scored, list[float]] | None:
    """The grounding bandit of one grounded click (``rl.ground_samples``; GUI-R1 / UI-R1's
    click reward, in GRPO's form): the grounding question's example with one pointer query per
    point of its group (the clicked one and its ``alternatives``), each point's advantage its
    `click_rewards` normalised within the group, (r − mean) / std (`grpo_advantages`). None
    when the group is one point or its rewards all agree (nothing to learn)."""
    rewards = click_rewards(g, boxes)
    if len(rewards) < 2 or len(set(rewards)) == 1:
        return None
    advantages = grpo_advantages(torch.tensor(rewards), len(rewards)).tolist()
    c, n = g.choice, len(rewards)
    example = MultimodalExample(g.ids, [IGNORE_INDEX] * len(g.ids), g.pixel_values,
                                g.image_grid_thw, [c.position] * n, [c.image] * n,
                                [(0.0, 0.0, 0.0, 0.0)] * n)  # fmt: skip
    choices = [(c.index, c.logprob), *((k, lp) for k, lp, _ in g.alternatives)]
    return (example, [math.nan] * len(g.ids), choices), advantages


def bandit_examples(run: EpisodeRun, weight: float = 1.0) -> list[tuple[Scored, list[float]]]:
    """`grounding_bandit` of every grounded click of ``run`` whose thought named an element on
    screen (``run.named``), its advantages × ``weight``."""
    out = []
    for s, boxes in zip(run.samples, run.named, strict=True):
        for g in s.grounded if boxes else ():
            if (scored := grounding_bandit(g, boxes)) is not None:
                out.append((scored[0], [weight * a for a in scored[1]]))
    return out


def sample_examples(s: PolicySample) -> list[Scored]:
    """`sample_example` of a step, then `grounded_example` of each grounded click it
    sampled — all of them get the step's advantage."""
    return [sample_example(s), *(grounded_example(g) for g in s.grounded)]


def step_examples(run: EpisodeRun) -> list[Scored]:
    """`sample_examples` of every step of ``run`` (played with ``keep_samples``)."""
    if len(run.samples) != len(run.responses):
        raise ValueError(
            "the run kept no samples: play it with run_episodes(..., keep_samples=True)"
        )
    return [example for s in run.samples for example in sample_examples(s)]


def token_rows(
    values: Sequence[Sequence[float]],
    rows: Sequence[Sequence[int]],
    seq_len: int,
    fill: float = 0.0,
) -> torch.Tensor:
    """``[B, seq_len]``: the per-token ``values`` of each example placed where
    `collate_rows` packs its tokens; ``fill`` elsewhere (padding)."""
    out = torch.full((len(rows), seq_len), fill)
    for r, row in enumerate(rows):
        p = 0
        for i in row:
            out[r, p : p + len(values[i])] = torch.tensor(values[i], dtype=out.dtype)
            p += len(values[i])
    return out


__all__ = [
    "Scored",
    "bandit_examples",
    "click_rewards",
    "grounded_example",
    "grounding_bandit",
    "sample_example",
    "sample_examples",
    "step_examples",
    "token_rows",
]
