"""Episodes of a policy in `GUIEnv`, run side by side, recorded for the metrics and as GIFs.

    runs = run_episodes(policy, [sample_task(s, "heldout") for s in range(50)], max_steps=15)
    summarize([r.record for r in runs])        # success, steps, grounding, invalid, per template
    save_gif(runs[0], "episode.gif")

All unfinished episodes advance one step per policy call (one batched decode for a model
policy). At every step the expert's move in the same state gives the grounding target: its
box when it points (click, double-click, scroll, drag), else none — so grounding accuracy
asks "did the agent point where the expert would have".
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lmforge.agents.actions import action_point, format_action, response_thought
from lmforge.agents.env import GUIEnv
from lmforge.agents.expert import ExpertStep, expert_step
from lmforge.agents.grounded import named_boxes
from lmforge.agents.metrics import EpisodeRecord, StepRecord, summarize
from lmforge.agents.policy import AgentContext, Policy, PolicySample
from lmforge.agents.tasks import Task, goal_progress, sample_task
from lmforge.agents.widgets import Box
from lmforge.io import atomic_write_bytes


@dataclass
class EpisodeRun:
    """One episode: its record for the metrics, the screenshots (first … last), the
    policy's raw responses and the action history shown to it."""

    task: Task
    record: EpisodeRecord
    frames: list[np.ndarray] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # previous actions as the policy saw them
    samples: list[PolicySample] = field(default_factory=list)  # with keep_samples: per step
    expert_steps: int = 0  # the scripted expert's steps before the policy's (`open_episode`)
    # per step: where its grounded click should land (`named_boxes`: the elements its thought
    # names, in the state it was written in) — the grounding bandit's reward (rl_examples)
    named: list[list[Box]] = field(default_factory=list)


def open_episode(
    task: Task, max_steps: int = 15, expert_steps: int = 0
) -> tuple[GUIEnv, EpisodeRun, AgentContext]:
    """A fresh environment on ``task``, its (empty) run and the policy's context. With
    ``expert_steps`` > 0 the scripted expert plays the episode's first steps (a start state
    from its trajectory, as RL from demonstration states — Salimans & Chen 2018): they are
    the context's history (screenshots, actions, thoughts) but not the run's steps, and the
    policy still has ``max_steps`` of its own. `ValueError` if the expert's steps end the
    episode."""
    env = GUIEnv(width=task.window.width, height=task.window.height,
                 max_steps=max_steps + expert_steps)  # fmt: skip
    obs, info = env.reset(options={"task": task})
    context = AgentContext(info["instruction"], [obs], [], env)
    for _ in range(expert_steps):
        step = expert_step(task, env.window)
        obs, _, terminated, truncated, _ = env.step(step.action)
        if terminated or truncated:
            raise ValueError(f"the expert ends {task.template!r} within {expert_steps} steps")
        context.screenshots.append(obs)
        context.previous.append(format_action(step.action))
        context.thoughts.append(step.thought)
    run = EpisodeRun(task, EpisodeRecord(task.template, False), [obs], history=context.previous,
                     expert_steps=expert_steps)  # fmt: skip
    return env, run, context


def record_step(
    env: GUIEnv, run: EpisodeRun, context: AgentContext, text: str, target: ExpertStep
) -> bool:
    """Execute the response ``text`` in ``env`` and record it in ``run`` and ``context``
    (``target``: the expert's move in the state it was written in, for grounding); whether
    the episode goes on."""
    run.named.append(named_boxes(env.window, text))
    obs, reward, terminated, truncated, info = env.step(text)
    valid = not info["invalid_action"]
    point = action_point(info["action"]) if valid else None
    box = target.target_box if action_point(target.action) is not None else None
    run.record.steps.append(StepRecord(valid, point, box))
    run.frames.append(obs)
    run.responses.append(text)
    context.screenshots.append(obs)
    context.previous.append(format_action(info["action"]) if valid else "invalid")
    context.thoughts.append(response_thought(text))
    run.record.success = bool(reward)
    run.record.progress = goal_progress(run.task, env.window)
    return not (terminated or truncated)


def run_episodes(
    policy: Policy,
    tasks: Sequence[Task],
    max_steps: int = 15,
    keep_samples: bool = False,
    expert_steps: Sequence[int] | None = None,
) -> list[EpisodeRun]:
    """Run ``policy`` on every task until each terminates or hits ``max_steps``; with
    ``keep_samples`` (a policy with ``sample``, e.g. `VLMPolicy`) each run keeps every
    step's `PolicySample` (token ids, log-probs, image inputs) for training on it;
    ``expert_steps`` (per task): the scripted expert's steps before the policy's
    (`open_episode`)."""
    starts = [0] * len(tasks) if expert_steps is None else list(expert_steps)
    if len(starts) != len(tasks):
        raise ValueError(f"{len(starts)} expert_steps for {len(tasks)} tasks")
    episodes = [open_episode(task, max_steps, k) for task, k in zip(tasks, starts, strict=True)]
    active = list(range(len(tasks)))
    while active:
        targets = [expert_step(episodes[i][0].task, episodes[i][0].window) for i in active]
        contexts = [episodes[i][2] for i in active]
        if keep_samples:
            samples = policy.sample(contexts)
            texts = [s.text.strip() for s in samples]
            for i, sample in zip(active, samples, strict=True):
                episodes[i][1].samples.append(sample)
        else:
            texts = policy.act(contexts)
        active = [i for i, text, target in zip(active, texts, targets, strict=True)
                  if record_step(*episodes[i], text, target)]  # fmt: skip
    return [run for _, run, _ in episodes]


def evaluate_agent(
    policy: Policy,
    split: str = "heldout",
    num_tasks: int = 50,
    seed: int = 0,
    max_steps: int = 15,
    screen: tuple[int, int] = (128, 128),
) -> tuple[dict, list[EpisodeRun]]:
    """`summarize` of ``num_tasks`` tasks of ``split`` (tasks seeded ``seed`` … ``seed +
    num_tasks − 1``), and the runs."""
    tasks = [
        sample_task(seed + i, split, width=screen[0], height=screen[1]) for i in range(num_tasks)
    ]
    runs = run_episodes(policy, tasks, max_steps)
    return summarize([r.record for r in runs]), runs


def annotate(frame: np.ndarray, point: tuple[int, int] | None, scale: int) -> Image.Image:
    """A frame enlarged ``scale``× (nearest), with the acted-on point marked by a ring."""
    image = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale),
                                          Image.NEAREST)  # fmt: skip
    if point is not None:
        x, y, r = point[0] * scale + scale // 2, point[1] * scale + scale // 2, 3 * scale
        ImageDraw.Draw(image).ellipse((x - r, y - r, x + r, y + r), outline="#ff2050", width=2)
    return image


def save_gif(run: EpisodeRun, path: str | Path, scale: int = 3, ms_per_frame: int = 700) -> Path:
    """The episode as an animated GIF: each frame with the point the next action acts on."""
    points = [s.point for s in run.record.steps] + [None]
    images = [annotate(f, p, scale) for f, p in zip(run.frames, points, strict=True)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=ms_per_frame, loop=0)  # fmt: skip
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


__all__ = [
    "EpisodeRun",
    "annotate",
    "evaluate_agent",
    "open_episode",
    "record_step",
    "run_episodes",
    "save_gif",
]
