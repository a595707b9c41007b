"""Groups per state for online RL: at every state an agent's own episode reaches, several
responses sampled from the same context, each scored by a rule-based step reward.

    groups, runs = play_state_groups(policy, tasks, group_size=8, max_steps=8)
    groups[0].samples, groups[0].rewards       # 8 responses in one state and their rewards

A group per episode (`lmforge.agents.rl`'s ``rl.groups=episode``) gives each episode one
advantage and applies it to every choice in the episode: a failed episode pushes down the
clicks in it that were right, and an agent that succeeds 10 % of the time sees groups with no
success at all. Here the group is the state (GUI-R1, Xia & Luo 2025; UI-R1, Lu et al. 2025:
GRPO on one step's rule-based reward — the action's type, the click inside the target box,
the typed text), and the states are the agent's own (the on-policy states of DAgger, Ross et
al. 2011): each task is played once by the policy (the *trunk*: the first response of each
group is the one executed), and in every state it reaches the policy samples ``group_size``
responses from the same context. A response's reward (`step_reward`) is

    r = 1[the action is the scripted expert's move in that state] + format_weight · 1[it parses]

where "the expert's move" is recomputed in that state (`lmforge.agents.expert.expert_step`,
closed loop: after a mistake it is the move that repairs it), and an action matches it when
it is of the same kind and, where the expert points, points inside the expert's target box;
types the same text; presses the same keys; scrolls the same way (`action_matches`). The
group's advantages are GRPO's (Shao et al. 2024 eq. 3), (r_i − mean r) / std r over the
state's responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lmforge.agents.actions import (
    Action,
    ActionParseError,
    Drag,
    Hotkey,
    Scroll,
    Type,
    action_point,
    parse_response,
)
from lmforge.agents.expert import ExpertStep, expert_step
from lmforge.agents.guidance import expert_sample
from lmforge.agents.policy import PolicySample, VLMPolicy
from lmforge.agents.rollout import EpisodeRun, open_episode, record_step
from lmforge.agents.tasks import Task
from lmforge.agents.widgets import box_contains


@dataclass
class StateGroup:
    """The responses sampled in one state of a trunk episode and their step rewards."""

    task: Task
    samples: list[PolicySample]
    rewards: list[float]
    guided: bool = False  # the last sample is the expert's (`lmforge.agents.guidance`)


def action_matches(action: Action, expert: ExpertStep) -> bool:
    """Whether ``action`` is the expert's move: the same kind of action; inside the expert's
    target box where the expert points (a drag: its first point; its release moves the thumb
    into the expert's ``drop_box`` range); the same text, keys or scroll direction."""
    move = expert.action
    if type(action) is not type(move):
        return False
    point = action_point(action)
    if point is not None and (
        expert.target_box is None or not box_contains(expert.target_box, *point)
    ):
        return False
    if isinstance(move, Drag):  # the release moves the thumb as far as the expert's would
        if expert.drop_box is None:
            return False
        dy = action.y2 - action.y1
        return expert.drop_box[1] - move.y1 <= dy <= expert.drop_box[3] - move.y1
    if isinstance(move, Type):
        return action.content == move.content
    if isinstance(move, Hotkey):
        return action.keys == move.keys
    if isinstance(move, Scroll):
        return action.direction == move.direction
    return True


def step_reward(
    text: str, expert: ExpertStep, screen: tuple[int, int], format_weight: float = 0.1
) -> float:
    """1[``text``'s action matches the expert's move] + ``format_weight`` · 1[it parses]
    (as ``Thought: …\\nAction: …`` with on-screen coordinates)."""
    try:
        action = parse_response(text.strip(), screen).action
    except ActionParseError:
        return 0.0
    return float(action_matches(action, expert)) + format_weight


def play_state_groups(
    policy: VLMPolicy,
    tasks: Sequence[Task],
    group_size: int,
    max_steps: int = 8,
    format_weight: float = 0.1,
    guide: bool = False,
    drag: bool = False,
) -> tuple[list[StateGroup], list[EpisodeRun]]:
    """Play every task once (all side by side, one batched decode per step); in each state
    sample ``group_size`` responses, score them (`step_reward`) and execute the first.
    With ``guide``, a state where no response matches the expert's move gets the expert's
    response in place of its last one (`lmforge.agents.guidance`, mixed-policy GRPO; never
    the first, which is executed). ``drag``: the expert's moves drag far rows into view
    (`lmforge.agents.expert.drag_step`). Returns the groups (in play order) and the trunk
    episodes."""
    if group_size < 2:
        raise ValueError(f"group_size={group_size} must be ≥ 2 (advantages are group-relative)")
    episodes = [open_episode(task, max_steps) for task in tasks]
    groups: list[StateGroup] = []
    active = list(range(len(tasks)))
    while active:
        experts = [expert_step(episodes[i][0].task, episodes[i][0].window, drag=drag)
                   for i in active]  # fmt: skip
        contexts = [episodes[i][2] for i in active for _ in range(group_size)]
        samples = policy.sample(contexts)
        still = []
        for j, (i, expert) in enumerate(zip(active, experts, strict=True)):
            env, run, context = episodes[i]
            group = samples[j * group_size : (j + 1) * group_size]
            screen = (env.task.window.width, env.task.window.height)
            rewards = [step_reward(s.text, expert, screen, format_weight) for s in group]
            demo = expert_sample(policy, context, expert) if guide and max(rewards) < 1 else None
            reward = 0.0 if demo is None else step_reward(demo.text, expert, screen, format_weight)
            guided = reward >= 1  # the demonstration as written is the expert's move
            if guided:
                group, rewards = group[:-1] + [demo], rewards[:-1] + [reward]
            groups.append(StateGroup(tasks[i], group, rewards, guided))
            run.samples.append(group[0])
            if record_step(env, run, context, group[0].text.strip(), expert):
                still.append(i)
        active = still
    return groups, [run for _, run, _ in episodes]


__all__ = ["StateGroup", "action_matches", "play_state_groups", "step_reward"]
