"""The agent RL run's configuration: the ``rl`` section (tasks, groups, sampling, rewards,
the grounding bandits and streams, the held-out evaluation) and its range checks, each error
naming its field.

    config = load_config("recipes/agent-rl-tiny.yaml", ["rl.group_size=4"], AgentRLConfig)
    check_agent_rl_config(config)

`lmforge.agents.rl` trains with it (`lmforge.agents.sft_config` is the SFT run's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.agents.grounded import CLICK_MODES
from lmforge.agents.policy import THOUGHT_MODES, TYPINGS
from lmforge.agents.tasks import SPLITS, split_choices
from lmforge.config import ConfigError
from lmforge.train.config import RunConfig

GROUPINGS = ("episode", "state")


@dataclass
class AgentRLSection:
    """Tasks, groups, sampling, reward and the held-out evaluation."""

    split: str = "train"
    composed: bool = False  # split train: the pool includes the composed templates
    clauses: float = 0.0  # split train: this share of the pool are clause tasks (task_clauses)
    messages: float = 0.0  # split train: this share of the pool's tasks switch their message
    templates: list[str] = field(default_factory=list)  # [] → the split's; else the pool's, in turn
    groups: str = "episode"  # episode: a task's episodes; state: responses in one state
    pool_tasks: int = 40
    fresh_pool: bool = True  # tasks the SFT data never held (false: seeds 0…, the SFT run's)
    failed_only: bool = True  # train on the pool's tasks the starting policy fails greedily
    tasks_per_rollout: int = 2
    group_size: int = 4
    temperature: float = 1.0
    max_steps: int = 8
    max_new_tokens: int = 160
    history: int = 2
    constrained: bool = False  # sample under the action grammar (then format is always 1)
    typing: str = "instruction"  # … type() writes spans of the instruction (or "free"); eval too
    thoughts: str = "expert"  # … thoughts in the expert's language (agents.thoughts; or "free")
    greedy_pointer: bool = False  # rollouts point greedily (as evaluation); RL trains the text only
    clicks: str = "grounded"  # clicks from the thought's grounding question, or "pointer"; eval too
    train_grounded: bool = False  # grounded clicks sampled in rollouts and trained (rl_examples)
    pointer_weight: float = 1.0  # each pointer choice's term × this in the loss (rl_objective)
    ground_samples: int = 0  # ≥ 2, with train_grounded: points per grounded click (rl_examples)
    ground_weight: float = 1.0  # … the bandit's advantages × this
    ground_temperature: float = 0.0  # … its other K − 1 points drawn at this T (0: temperature)
    pointer_lr_scale: float = 1.0  # the pointer head's learning rate × this (its own AdamW groups)
    screen_questions: int = 0  # with ground_samples: grounding bandits on fresh random windows
    screen_open_rate: float = 0.5  # … a dropdown open in this share of them (rl_screens)
    screen_focus: float = 0.0  # … this share asked about list rows and options (rl_screens)
    state_tasks: int = 0  # groups=episode: + this many pool tasks per rollout as state groups
    state_weight: float = 1.0  # … their state-normalised advantages × this (rl_states)
    state_max: int = 4  # … at most this many of their states (whose rewards differ) per rollout
    format_weight: float = 0.1
    expert_weight: float = 0.0  # + this × (steps pointing where the expert would) / max_steps
    progress_weight: float = 0.0  # + this × the share of goal values right at the end
    clip_eps: float = 0.2  # GRPO/PPO ratio clipping ε
    kl_coef: float = 0.0  # β of the k3 KL penalty to the starting (SFT) policy; 0: none
    iterations: int = 1  # GRPO's μ: optimizer steps on each rollout (the ratio clips after 1)
    max_draws: int = 1  # groups=episode, > 1: redraw tasks whose groups all earn one reward (DAPO)
    guide: bool = False  # groups=state: the expert's response joins states no response got right
    expert_starts: float = 0.0  # groups=episode: the share of groups started mid-expert-episode
    expert_drags: bool = False  # groups=state: the expert's moves drag far rows (expert.drag_step)
    screen: int = 128
    eval_split: str = "heldout"
    eval_tasks: int = 30  # 0 skips the held-out evaluation
    eval_max_steps: int = 15
    select_every: int = 0  # > 0: score the policy on validation tasks every k steps (rl_select)
    select_tasks: int = 100  # … this many fresh tasks of rl.split; model/ gets the best weights


@dataclass
class AgentRLConfig(RunConfig):
    """An agent RL run: the training sections plus ``rl``; ``model.init_from`` is the SFT
    agent's folder."""

    out_dir: str = "runs/agent-rl"
    rl: AgentRLSection = field(default_factory=AgentRLSection)


def check_agent_rl_config(config: AgentRLConfig) -> None:
    """Raise `ConfigError` naming the ``rl.*`` field(s) of the first out-of-range or
    inconsistent setting (a share outside [0, 1], a group of one, a stream without its
    bandits, an option that needs the other grouping)."""
    r = config.rl
    if r.split not in SPLITS or r.eval_split not in SPLITS:
        raise ConfigError(
            f"rl.split={r.split!r} / rl.eval_split={r.eval_split!r}: choose from {SPLITS}"
        )
    if r.train_grounded and (r.clicks != "grounded" or r.greedy_pointer):
        raise ConfigError("rl.train_grounded samples and trains grounded clicks: it needs "
                          "rl.clicks=grounded and rl.greedy_pointer=false")  # fmt: skip
    if not r.pointer_weight >= 0 or not r.pointer_lr_scale > 0:
        raise ConfigError(f"rl.pointer_weight={r.pointer_weight} must be ≥ 0 and "
                          f"rl.pointer_lr_scale={r.pointer_lr_scale} > 0")  # fmt: skip
    if (r.ground_samples or r.ground_temperature) and (
            r.ground_samples < 2 or not r.train_grounded or r.groups != "episode"
            or not r.ground_weight >= 0 or not r.ground_temperature >= 0):  # fmt: skip
        raise ConfigError(f"rl.ground_samples={r.ground_samples}: a group of ≥ 2 points per "
                          "sampled grounded click needs rl.train_grounded=true, rl.groups=episode"
                          f", rl.ground_weight={r.ground_weight} ≥ 0 and rl.ground_temperature="
                          f"{r.ground_temperature} ≥ 0")  # fmt: skip
    if r.screen_questions and not (r.screen_questions > 0 and r.ground_samples
                                   and 0 <= r.screen_open_rate <= 1 and 0 <= r.screen_focus <= 1):  # fmt: skip
        raise ConfigError(f"rl.screen_questions={r.screen_questions}: ≥ 0 bandits that need "
                          "rl.ground_samples ≥ 2 points each, rl.screen_open_rate and "
                          "rl.screen_focus in [0, 1]")  # fmt: skip
    if ((r.composed or r.clauses or r.messages) and r.split != "train") or not (
            0 <= r.clauses <= 1 and 0 <= r.messages <= 1):  # fmt: skip
        raise ConfigError(f"rl.composed, rl.clauses={r.clauses}, rl.messages={r.messages}: the "
                          "composed and clause templates and switched messages are "
                          f"training-only (rl.split={r.split!r}), shares in [0, 1]")  # fmt: skip
    if (r.groups not in GROUPINGS or r.typing not in TYPINGS or r.thoughts not in THOUGHT_MODES
            or r.clicks not in CLICK_MODES):  # fmt: skip
        raise ConfigError(f"rl.groups={r.groups!r} / rl.typing={r.typing!r} / rl.thoughts="
                          f"{r.thoughts!r} / rl.clicks={r.clicks!r}: choose from {GROUPINGS} / "
                          f"{TYPINGS} / {THOUGHT_MODES} / {CLICK_MODES}")  # fmt: skip
    if r.guide and r.groups != "state":
        raise ConfigError("rl.guide=true needs rl.groups=state (the expert's move is per state)")
    allowed = split_choices(r.split)[0]
    if any(name not in allowed for name in r.templates):
        raise ConfigError(f"rl.templates={r.templates!r}: the pool's templates must be "
                          f"rl.split={r.split!r}'s, from {allowed}")  # fmt: skip
    if r.templates and (r.composed or r.clauses):
        raise ConfigError("rl.templates names the pool's templates: it excludes rl.composed "
                          "and rl.clauses")  # fmt: skip
    if r.group_size < 2:
        raise ConfigError(f"rl.group_size={r.group_size} must be ≥ 2 (advantages are group-relative)")  # fmt: skip
    if not (r.expert_weight >= 0 and r.kl_coef >= 0 and r.progress_weight >= 0):
        raise ConfigError(
            f"rl.expert_weight={r.expert_weight}, rl.kl_coef={r.kl_coef} and "
            f"rl.progress_weight={r.progress_weight} must be ≥ 0"
        )
    if min(r.tasks_per_rollout, r.pool_tasks, r.max_steps, r.history, r.iterations,
           r.max_draws) < 1:  # fmt: skip
        raise ConfigError("rl.tasks_per_rollout, rl.pool_tasks, rl.max_steps, rl.history, "
                          "rl.iterations and rl.max_draws must be ≥ 1")  # fmt: skip
    if (r.state_tasks < 0 or not r.state_weight >= 0 or r.state_max < 1
            or (r.state_tasks and r.groups != "episode")):  # fmt: skip
        raise ConfigError(f"rl.state_tasks={r.state_tasks} must be ≥ 0, with rl.groups=episode "
                          f"(state groups beside the episode groups), rl.state_weight="
                          f"{r.state_weight} ≥ 0 and rl.state_max={r.state_max} ≥ 1")  # fmt: skip
    if r.max_draws > 1 and r.groups != "episode":
        raise ConfigError("rl.max_draws > 1 needs rl.groups=episode (it keeps whole task groups)")
    if r.select_every < 0 or (r.select_every and r.select_tasks < 1):
        raise ConfigError(f"rl.select_every={r.select_every} must be ≥ 0 (0: no selection), "
                          f"with rl.select_tasks={r.select_tasks} ≥ 1 validation tasks")  # fmt: skip
    if not 0 <= r.expert_starts <= 1 or (r.expert_starts and r.groups != "episode"):
        raise ConfigError(f"rl.expert_starts={r.expert_starts}: a share in [0, 1], with "
                          "rl.groups=episode (a group's episodes share their start)")  # fmt: skip


__all__ = ["GROUPINGS", "AgentRLConfig", "AgentRLSection", "check_agent_rl_config"]
