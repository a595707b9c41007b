"""PPO's settings: the ``ppo:`` section of a recipe (`PPOSection`), the run config
(`PPOConfig` = a `RunConfig` with a ``ppo`` section) and their range checks.

They sit beside the PPO trainer (`lmforge.align.ppo_trainer`) in a
module of their own because the trainer's pieces — the experience stream
(`lmforge.align.ppo_experience`) and the objective — read them too, and the trainer imports
those pieces (no import cycles).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmforge.align.custom_rewards import parse_reward_spec
from lmforge.train.config import RunConfig

__all__ = ["PPOConfig", "PPOSection", "check_ppo_section"]


@dataclass
class PPOSection:
    """PPO hyper-parameters (``ppo:`` in a recipe). Units: a rollout is ``rollout_batch_size``
    prompts with one completion each; a minibatch (optimizer step) is ``train.batch_size ×
    train.grad_accum`` of them; each rollout is trained on for ``ppo_epochs`` passes."""

    task: Literal["arithmetic", "countdown", "prompts"] = "arithmetic"  # prompts: data.paths
    num_prompts: int = 1000
    digits: int = 1  # arithmetic operand digits
    chat_template: bool = True  # format prompts with the tokenizer's chat template
    reward: Literal["task", "format", "r1", "model"] = "task"  # model: a reward model folder
    reward_model: str | None = None  # `lmforge rm` output folder (with reward: model)
    rewards: list[str] = field(default_factory=list)  # MODULE:FUNCTION[:WEIGHT]: replace `reward`
    require_tags: bool = False  # task reward: the answer must sit in <answer>…</answer>
    stop: list[str] = field(default_factory=list)  # stop strings (kept in the completion)
    rollout_batch_size: int = 16
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    ppo_epochs: int = 2
    kl_coef: float = 0.05  # β; 0 → no reference model
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"  # KL folded into the token rewards
    kl_in_loss: bool = False  # instead: k3 KL in the loss (GRPO-style)
    reward_norm: bool = True  # divide scores by their running std (PPO-max)
    reward_center: bool = False  # … and subtract the running mean
    reward_clip: float = 5.0  # then clip to ± this; 0 → no clipping
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2  # 0 → unclipped value loss
    vf_coef: float = 0.5
    entropy_coef: float = 0.0
    ptx_coef: float = 0.0  # PPO-ptx γ; > 0 mixes in SFT/pretraining batches
    ptx_data: list[str] = field(default_factory=list)  # SFT files; empty → synthetic chats
    critic_init: Literal["auto", "reward_model", "policy"] = "auto"  # auto: RM when there is one


@dataclass
class PPOConfig(RunConfig):
    """A `RunConfig` with a ``ppo`` section."""

    ppo: PPOSection = field(default_factory=PPOSection)


def check_ppo_section(p: PPOSection, micro_batch_size: int, grad_accum: int) -> None:
    """Range checks, naming the field."""
    errors = []
    for name in ("num_prompts", "rollout_batch_size", "max_new_tokens", "ppo_epochs"):
        if getattr(p, name) < 1:
            errors.append(f"ppo.{name}={getattr(p, name)} must be ≥ 1")
    if not p.temperature > 0:
        errors.append(f"ppo.temperature={p.temperature} must be > 0 (PPO samples)")
    for name in ("kl_coef", "reward_clip", "value_clip_eps", "vf_coef", "ptx_coef"):
        if getattr(p, name) < 0:
            errors.append(f"ppo.{name}={getattr(p, name)} must be ≥ 0")
    if not 0 < p.clip_eps < 1:
        errors.append(f"ppo.clip_eps={p.clip_eps} must be in (0, 1)")
    minibatch = micro_batch_size * grad_accum
    if p.rollout_batch_size % minibatch:
        errors.append(
            f"ppo.rollout_batch_size={p.rollout_batch_size} must be a multiple of "
            f"train.batch_size × train.grad_accum = {minibatch}"
        )
    for spec in p.rewards:
        try:
            parse_reward_spec(spec)
        except ValueError as exc:
            errors.append(f"ppo.rewards: {exc}")
    if errors:
        raise ValueError("invalid PPO config: " + "; ".join(errors))
