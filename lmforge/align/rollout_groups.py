"""Group rollouts (GRPO and its variants): which prompts, a group of completions each, scores.

    sampler = PromptSampler(len(problems), seed=0, prioritized=True)
    groups, stats = collect_groups(model, tok, problems, encode, reward_fn, sampler,
                                   SamplingParams(n=8, max_tokens=64), num_groups=4, seed=step)
    batch = rollout_tensors([c for g in groups for c in g.completions], pad_id)

Built on `lmforge.align.rollout` (sampling on the engine, seeds, training layout).

Group selection: DAPO's *dynamic sampling* (Yu et al. 2025, §3.2) drops groups whose rewards
are all equal (their group-relative advantages are zero) and samples more prompts until the
batch is full; Kimi k1.5's *prioritised sampling* (Kimi Team 2025, §2.3.3) draws prompt i
with probability ∝ 1 − s_i, s_i its latest success rate (`PromptSampler`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lmforge.align.rollout import Completion, RolloutEngine, request_seed, sample_completions
from lmforge.infer import SamplingParams

__all__ = ["CollectStats", "PromptSampler", "RewardFn", "RolloutGroup", "collect_groups"]

# reward_fn(item, completion) -> {"reward": r, ...other logged components, e.g. "accuracy"}
RewardFn = Callable[[Any, Completion], dict[str, float]]


@dataclass
class RolloutGroup:
    """The completions of one prompt and their scores (``scores[k]`` lists one value per
    completion; ``scores["reward"]`` is what the advantages use)."""

    index: int  # the prompt's index in the task's item list
    item: Any
    completions: list[Completion]
    scores: dict[str, list[float]]

    @property
    def rewards(self) -> list[float]:
        return self.scores["reward"]

    @property
    def success_rate(self) -> float:
        """Mean ``accuracy`` (or reward when there is none) — for prioritised sampling."""
        values = self.scores.get("accuracy", self.rewards)
        return sum(values) / len(values)


class PromptSampler:
    """Which prompt indices each rollout uses.

    Uniform: a fresh seeded permutation per epoch, read in order. Prioritised (Kimi k1.5):
    each draw picks index i with probability ∝ max(1 − s_i, ``floor``), where s_i is the
    success rate last reported by `update` (0 for prompts not yet seen), so solved prompts
    fade out and hard ones come back. State (`state_dict`) is JSON: exact resume.
    """

    def __init__(
        self, num_prompts: int, seed: int = 0, prioritized: bool = False, floor: float = 0.02
    ) -> None:
        if num_prompts < 1:
            raise ValueError(f"num_prompts={num_prompts} must be ≥ 1")
        if not 0 <= floor <= 1:
            raise ValueError(f"floor={floor} must be in [0, 1]")
        self.num_prompts, self.seed = num_prompts, seed
        self.prioritized, self.floor = prioritized, floor
        self.draws = 0  # prompts drawn so far
        self.success: dict[int, float] = {}

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(self.num_prompts))
        random.Random(f"prompts-{self.seed}-{epoch}").shuffle(order)
        return order

    def sample(self, n: int) -> list[int]:
        """The next ``n`` prompt indices."""
        if self.prioritized:
            weights = [
                max(1.0 - self.success.get(i, 0.0), self.floor) for i in range(self.num_prompts)
            ]
            if not any(weights):
                weights = [1.0] * self.num_prompts
            rng = random.Random(f"prioritized-{self.seed}-{self.draws}")
            out = rng.choices(range(self.num_prompts), weights=weights, k=n)
            self.draws += n
            return out
        out = []
        while len(out) < n:
            epoch, pos = divmod(self.draws, self.num_prompts)
            take = min(n - len(out), self.num_prompts - pos)
            out.extend(self._epoch_order(epoch)[pos : pos + take])
            self.draws += take
        return out

    def update(self, index: int, success_rate: float) -> None:
        """Record prompt ``index``'s latest success rate (in [0, 1])."""
        self.success[int(index)] = float(min(1.0, max(0.0, success_rate)))

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "success": {str(k): v for k, v in self.success.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = int(state["draws"])
        self.success = {int(k): float(v) for k, v in state.get("success", {}).items()}


@dataclass
class CollectStats:
    """What `collect_groups` did: prompts sampled, groups kept/dropped, sampling rounds."""

    rounds: int = 0
    sampled_groups: int = 0
    dropped_groups: int = 0  # all-equal rewards (dynamic sampling)
    kept_uniform: int = 0  # all-equal groups kept because the round limit was reached
    scores: dict[str, float] = field(default_factory=dict)  # means over every sampled group


def collect_groups(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Any],
    encode: Callable[[Any], list[int]],
    reward_fn: RewardFn,
    sampler: PromptSampler,
    sampling: SamplingParams,
    num_groups: int,
    seed: int,
    *,
    dynamic_sampling: bool = False,
    max_rounds: int = 4,
    group_offset: int = 0,
    engine: RolloutEngine | None = None,
) -> tuple[list[RolloutGroup], CollectStats]:
    """Sample ``num_groups`` groups of ``sampling.n`` completions and score them.

    With ``dynamic_sampling`` groups whose rewards are all equal are dropped and more prompts
    are drawn (up to ``max_rounds`` rounds; after that the batch is filled with dropped
    groups, which then contribute no policy gradient). Every sampled group updates the
    sampler's success rates. ``seed`` (e.g. the rollout number) seeds the requests, with each
    group's position in the step (``group_offset`` + its index: a rank's first group's place
    among every rank's, `lmforge.align.rl_distributed`). A ``reward_fn`` with a
    ``score_many(items, completions)`` method scores a whole group at once (e.g. a reward
    model's batched forward). ``engine``: the `RolloutEngine` that samples (default: a fresh
    engine per call, `sample_completions`).
    """
    g = sampling.n
    kept: list[RolloutGroup] = []
    uniform: list[RolloutGroup] = []
    stats = CollectStats()
    totals: dict[str, float] = {}
    count = 0
    while len(kept) < num_groups and stats.rounds < max(1, max_rounds):
        need = num_groups - len(kept)
        indices = sampler.sample(need)
        prompts = [encode(items[i]) for i in indices]
        seeds = [request_seed(seed, stats.rounds, group_offset + j, k)
                 for j in range(need) for k in range(g)]  # fmt: skip
        flat = [p for p in prompts for _ in range(g)]
        completions = sample_completions(model, tokenizer, flat, sampling, seeds, engine=engine)
        stats.rounds += 1
        for j, index in enumerate(indices):
            group_completions = completions[j * g : (j + 1) * g]
            scores: dict[str, list[float]] = {}
            score_many = getattr(reward_fn, "score_many", None)
            if score_many is not None:
                results = score_many([items[index]] * g, group_completions)
            else:
                results = [reward_fn(items[index], c) for c in group_completions]
            for result in results:
                if "reward" not in result:
                    raise ValueError("reward_fn must return a dict with a 'reward' entry")
                for key, value in result.items():
                    scores.setdefault(key, []).append(float(value))
            group = RolloutGroup(index, items[index], group_completions, scores)
            sampler.update(index, group.success_rate)
            stats.sampled_groups += 1
            for key, values in scores.items():
                totals[key] = totals.get(key, 0.0) + sum(values)
            count += g
            if dynamic_sampling and g > 1 and len(set(group.rewards)) == 1:
                stats.dropped_groups += 1
                uniform.append(group)
            else:
                kept.append(group)
    while len(kept) < num_groups:  # round limit reached: fill with all-equal groups
        kept.append(uniform.pop(0))
        stats.kept_uniform += 1
    stats.scores = {k: v / max(count, 1) for k, v in totals.items()}
    return kept[:num_groups], stats
