"""GRPO's settings: the ``grpo:`` section of a recipe (`GRPOSection`), the run config
(`GRPOConfig`), their checks, and what they select — the task's items (train / held-out),
the rollout and evaluation sampling, and the reward (`grpo_reward`: the built-in R1 rule
reward, the user's functions, a reward model; `lmforge.align.custom_rewards`).

Apart from the trainer (`lmforge.align.grpo_trainer`) because the rollout stream
(`lmforge.align.grpo_rollouts`) reads them too, and the trainer imports that stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lmforge.align.custom_rewards import CombinedReward, parse_reward_spec
from lmforge.align.grpo import AGGREGATIONS
from lmforge.align.rl_tasks import task_problems
from lmforge.align.rollout import check_rollout_sampling
from lmforge.config import ConfigError
from lmforge.infer import SamplingParams
from lmforge.train.config import RunConfig
from lmforge.train.distributed import rank_and_world

__all__ = [
    "GRPOConfig",
    "GRPOSection",
    "check_grpo_config",
    "config_task_items",
    "eval_rollout_sampling",
    "grpo_reward",
    "rollout_sampling",
    "task_items",
]


@dataclass
class GRPOSection:
    """GRPO hyper-parameters, the task and the rollout settings."""

    task: Literal["arithmetic", "countdown", "prompts"] = "arithmetic"  # prompts: data.paths
    digits: int = 2  # arithmetic operands
    ops: list[str] = field(default_factory=lambda: ["+", "-"])
    num_numbers: int = 3  # countdown
    max_number: int = 20
    max_target: int = 100
    num_prompts: int = 2000  # training problems
    eval_prompts: int = 100  # held-out problems for accuracy
    eval_samples: int = 0  # 0: greedy held-out accuracy; k > 0: R1's pass@1 over k samples
    eval_temperature: float = 0.6  # pass@1 sampling (eval_samples > 0), as DeepSeek-R1
    eval_top_p: float = 0.95
    system_prompt: str = ""
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    aggregation: str = "grpo"  # grpo | dr_grpo | dapo | gspo
    scale: Literal["std", "none"] = "std"  # advantage normaliser (none: Dr. GRPO)
    eps_low: float = 0.2
    eps_high: float | None = None  # None → eps_low (DAPO clip-higher: 0.28)
    beta: float = 0.0  # k3 KL weight; 0 → no reference model
    iterations: int = 1  # μ: optimizer steps per rollout
    format_weight: float = 0.1  # reward = accuracy + format_weight × format (+ overlong)
    overlong_cache: int = 0  # > 0: DAPO soft overlong punishment over the last this many tokens
    dynamic_sampling: bool = False  # DAPO: drop all-equal groups, sample more prompts
    max_sampling_rounds: int = 4
    prioritized: bool = False  # Kimi k1.5: P(prompt) ∝ 1 − success rate
    rewards: list[str] = field(default_factory=list)  # MODULE:FUNCTION[:WEIGHT] | r1; [] → r1
    reward_model: str | None = None  # `lmforge rm` output folder, added to the rewards
    reward_model_weight: float = 1.0
    compile_decode: bool = False  # rollouts decode through a torch.compile-d step (long runs)


@dataclass
class GRPOConfig(RunConfig):
    """A GRPO run: the training sections plus ``grpo``."""

    out_dir: str = "runs/grpo"
    grpo: GRPOSection = field(default_factory=GRPOSection)


def check_grpo_config(config: GRPOConfig) -> None:
    """Range checks for the ``grpo`` section (raises `ConfigError` naming the field)."""
    g, t = config.grpo, config.train
    if g.aggregation not in AGGREGATIONS:
        raise ConfigError(f"grpo.aggregation={g.aggregation!r}: choose one of {AGGREGATIONS}")
    if g.group_size < 2:
        raise ConfigError(f"grpo.group_size={g.group_size} must be ≥ 2 (advantages are relative)")
    if (t.batch_size * t.grad_accum) % g.group_size:
        raise ConfigError(
            f"train.batch_size × train.grad_accum = {t.batch_size * t.grad_accum} sequences per "
            f"step must be a multiple of grpo.group_size={g.group_size}"
        )
    for name in ("iterations", "max_new_tokens", "num_prompts", "eval_prompts"):
        if getattr(g, name) < 1:
            raise ConfigError(f"grpo.{name}={getattr(g, name)} must be ≥ 1")
    if g.eval_samples < 0 or not g.eval_temperature > 0 or not 0 < g.eval_top_p <= 1:
        raise ConfigError(
            "grpo.eval_samples must be ≥ 0, grpo.eval_temperature > 0, grpo.eval_top_p in (0, 1]"
        )
    if g.beta < 0 or g.eps_low < 0 or (g.eps_high is not None and g.eps_high < 0):
        raise ConfigError("grpo.beta, grpo.eps_low and grpo.eps_high must be ≥ 0")
    if not 0 <= g.overlong_cache <= g.max_new_tokens:
        raise ConfigError(f"grpo.overlong_cache={g.overlong_cache} must be in [0, max_new_tokens]")
    if g.task == "prompts" and not config.data.paths:
        raise ConfigError("grpo.task=prompts needs data.paths (--data FILE: JSONL with prompt)")
    for spec in g.rewards:
        try:
            parse_reward_spec(spec)
        except ValueError as exc:
            raise ConfigError(f"grpo.rewards: {exc}") from exc
    if g.dynamic_sampling and rank_and_world()[1] > 1:
        raise ConfigError(
            "grpo.dynamic_sampling runs in one process only (each rank would resample a "
            "different number of prompts); set grpo.dynamic_sampling=false under torchrun"
        )


# ---------------------------------------------------------------------- task and sampling
def task_items(
    section: GRPOSection, split: str, n: int, seed: int, paths=(), *, val_paths=(),
    val_fraction: float = 0.1,
) -> list[Any]:  # fmt: skip
    """``n`` problems of the configured task (``split`` "train" or "test";
    `lmforge.align.rl_tasks.task_problems`: for ``prompts`` the test split is ``val_paths``
    or a seeded ``val_fraction`` of the records)."""
    return task_problems(
        section.task, split, n, seed, digits=section.digits, ops=section.ops,
        num_numbers=section.num_numbers, max_number=section.max_number,
        max_target=section.max_target, paths=paths, val_paths=val_paths,
        val_fraction=val_fraction,
    )  # fmt: skip


def config_task_items(config: GRPOConfig, split: str) -> list[Any]:
    """The run's train (``grpo.num_prompts``) or held-out (``grpo.eval_prompts``) items:
    ``data.paths`` / ``data.val_paths`` / ``data.val_fraction`` for ``grpo.task=prompts``."""
    s, d = config.grpo, config.data
    n = s.num_prompts if split == "train" else s.eval_prompts
    return task_items(s, split, n, config.train.seed, d.paths, val_paths=d.val_paths,
                      val_fraction=d.val_fraction)  # fmt: skip


def grpo_reward(section: GRPOSection, device: torch.device | str = "cpu") -> CombinedReward:
    """The run's reward: ``grpo.rewards`` (default: the built-in ``r1``) plus, with
    ``grpo.reward_model``, the reward model's score × ``grpo.reward_model_weight``."""
    s = section
    specs = [parse_reward_spec(x) for x in s.rewards]
    reward_model = None
    if s.reward_model:
        from lmforge.align.preference_objective import load_reward_model

        reward_model = load_reward_model(s.reward_model, dtype=torch.float32).to(device).eval()
    elif not specs:
        specs = [parse_reward_spec("r1")]
    return CombinedReward(specs, format_weight=s.format_weight, max_new_tokens=s.max_new_tokens,
                          overlong_cache=s.overlong_cache, reward_model=reward_model,
                          reward_model_weight=s.reward_model_weight)  # fmt: skip


def rollout_sampling(section: GRPOSection) -> SamplingParams:
    """The training rollouts' sampling settings: ``group_size`` completions per prompt of at
    most ``max_new_tokens`` tokens at ``temperature`` / ``top_p`` / ``top_k``, ending at a stop
    token or one of ``stop`` (kept in the completion)."""
    s = section
    sampling = SamplingParams(n=s.group_size, max_tokens=s.max_new_tokens, temperature=s.temperature,
                              top_p=s.top_p, top_k=s.top_k, stop=tuple(s.stop))  # fmt: skip
    check_rollout_sampling(sampling)
    return sampling


def eval_rollout_sampling(section: GRPOSection) -> SamplingParams:
    """The held-out evaluation's sampling settings (``eval_temperature`` / ``eval_top_p``;
    unused by greedy evaluation, ``eval_samples`` = 0)."""
    s = section
    sampling = SamplingParams(n=1, max_tokens=s.max_new_tokens, temperature=s.eval_temperature,
                              top_p=s.eval_top_p, stop=tuple(s.stop))  # fmt: skip
    check_rollout_sampling(sampling)
    return sampling
