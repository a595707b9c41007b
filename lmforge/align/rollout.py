"""Policy rollouts for RL fine-tuning (GRPO, PPO): sample, score, lay out for training.

    sampler = PromptSampler(len(problems), seed=0, prioritized=True)
    groups, stats = collect_groups(model, tok, problems, encode, reward_fn, sampler,
                                   RolloutSampling(group_size=8), num_groups=4, seed=step)
    batch = rollout_tensors([c for g in groups for c in g.completions], pad_id)

Sampling runs on lmforge's inference engine (`lmforge.infer.Engine`: paged KV cache,
continuous batching, one forward over the ragged batch per decoding step), one request per
completion with its own seed, so a completion does not depend on what else is in the batch.
A fresh engine is built per call: the engine's fused weight copies follow optimizer steps,
and a new engine also starts with an empty prefix cache (KV blocks cached under older
weights must not be reused).

A completion keeps the token that stopped it (EOS / end of turn), so the policy is trained
to stop; stop *strings* (``</answer>``) end a completion right after the token that
completes them and are kept in it (the engine's own stop strings cut them off).

Training layout (`rollout_tensors`): prompt + completion, right-padded to ``[N, T]``;
``labels`` are -100 except on completion tokens (lmforge's unshifted convention), so
`lmforge.align.logprobs.model_logprobs` gives the per-token log-probs of exactly the sampled
tokens and a mask of them. Right padding needs no attention mask for a causal model.

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

import torch
from torch import nn

from lmforge.align.logprobs import model_logprobs
from lmforge.models.transformer import IGNORE_INDEX

__all__ = [
    "Completion",
    "PromptSampler",
    "RolloutGroup",
    "RolloutSampling",
    "collect_groups",
    "policy_logprobs",
    "request_seed",
    "rollout_tensors",
    "sample_completions",
]

# reward_fn(item, completion) -> {"reward": r, ...other logged components, e.g. "accuracy"}
RewardFn = Callable[[Any, "Completion"], dict[str, float]]


@dataclass(frozen=True)
class RolloutSampling:
    """How completions are sampled: ``group_size`` per prompt, at most ``max_new_tokens``
    each (the stop token included), ending early at a stop token or one of ``stop``."""

    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ("</answer>",)

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size={self.group_size} must be ≥ 1")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be ≥ 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 for RL rollouts")


@dataclass
class Completion:
    """One sampled completion. ``completion_ids`` include the stop token when one ended it;
    ``engine_logprobs`` (when asked for) are the engine's log p of each *sampled* token under
    the raw (temperature 1) distribution — the stop token has none."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finish_reason: str  # "stop" or "length"
    engine_logprobs: list[float] | None = None


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


def request_seed(seed: int, *parts: int) -> int:
    """A stable 63-bit seed for one request from ``seed`` and its coordinates."""
    return random.Random(":".join(map(str, (seed, *parts)))).getrandbits(63)


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    sampling: RolloutSampling,
    seeds: Sequence[int],
    *,
    with_logprobs: bool = False,
    greedy: bool = False,
    max_num_seqs: int = 256,
) -> list[Completion]:
    """One completion per prompt in ``prompts`` (repeat a prompt for a group), in order.

    ``seeds[i]`` seeds request i; ``greedy`` decodes at temperature 0 (evaluation).
    """
    from lmforge.infer import Engine, SamplingParams

    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        return []
    longest = max(len(p) for p in prompts) + sampling.max_new_tokens
    engine = Engine(
        model,
        tokenizer,
        max_num_seqs=min(max_num_seqs, len(prompts)),
        max_num_batched_tokens=max(2048, longest),
        num_blocks=min(len(prompts), max_num_seqs) * (-(-longest // 16) + 1) + 1,
    )
    stop_ids = tuple(getattr(tokenizer, "stop_token_ids", ()) or ())
    ids = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        params = SamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            stop_token_ids=stop_ids,
            seed=int(seed),
            logprobs=0 if with_logprobs else None,
        )
        ids.append(engine.add_request(list(prompt), params))
    done: dict[str, Completion] = {}
    logprobs: dict[str, list[float]] = {i: [] for i in ids}
    while len(done) < len(ids):
        if not engine.has_unfinished():
            raise RuntimeError("the engine stopped before every rollout finished")
        for out in engine.step():
            rid = out.request_id
            if rid in done:
                continue
            if out.logprobs:
                logprobs[rid].extend(lp.logprob for lp in out.logprobs)
            hit = _first_stop(out.text, sampling.stop)
            if hit is not None and out.finish_reason != "abort":
                tokens = list(out.token_ids)
                done[rid] = Completion(out.prompt_token_ids, tokens, out.text, "stop")
                engine.abort(rid)
            elif out.finished:
                tokens = list(out.token_ids)
                if out.finish_reason == "stop" and isinstance(out.stop_reason, int):
                    tokens.append(out.stop_reason)  # train the policy to stop
                done[rid] = Completion(out.prompt_token_ids, tokens, out.text, out.finish_reason)
    completions = [done[i] for i in ids]
    if with_logprobs:
        for rid, c in zip(ids, completions, strict=True):
            c.engine_logprobs = logprobs[rid][: len(c.completion_ids)]
    return completions


def _first_stop(text: str, stops: Sequence[str]) -> str | None:
    for stop in stops:
        if stop in text:
            return stop
    return None


def rollout_tensors(completions: Sequence[Completion], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``labels`` ``[N, T]`` (prompt + completion, right-padded with
    ``pad_id``; labels -100 but on completion tokens) and ``lengths`` ``[N]`` (completion
    tokens)."""
    if not completions:
        raise ValueError("no completions to lay out")
    width = max(len(c.prompt_ids) + len(c.completion_ids) for c in completions)
    ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, c in enumerate(completions):
        p, n = len(c.prompt_ids), len(c.completion_ids)
        if n == 0:
            raise ValueError(f"completion {row} is empty (max_new_tokens ≥ 1 gives ≥ 1 token)")
        ids[row, :p] = torch.tensor(c.prompt_ids)
        ids[row, p : p + n] = torch.tensor(c.completion_ids)
        labels[row, p : p + n] = ids[row, p : p + n]
    lengths = torch.tensor([len(c.completion_ids) for c in completions])
    return {"input_ids": ids, "labels": labels, "lengths": lengths}


@torch.no_grad()
def policy_logprobs(
    model: nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0
) -> torch.Tensor:
    """``[N, T]`` log-probs of the sampled tokens (logits positions, 0 elsewhere) — the
    same function the training objective evaluates, without gradients (old / reference
    policy)."""
    was_training = model.training
    model.eval()
    try:
        logps, _, _ = model_logprobs(
            model, batch["input_ids"], batch["labels"], temperature=temperature
        )
    finally:
        model.train(was_training)
    return logps


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
    sampling: RolloutSampling,
    num_groups: int,
    seed: int,
    *,
    dynamic_sampling: bool = False,
    max_rounds: int = 4,
) -> tuple[list[RolloutGroup], CollectStats]:
    """Sample ``num_groups`` groups of ``sampling.group_size`` completions and score them.

    With ``dynamic_sampling`` groups whose rewards are all equal are dropped and more prompts
    are drawn (up to ``max_rounds`` rounds; after that the batch is filled with dropped
    groups, which then contribute no policy gradient). Every sampled group updates the
    sampler's success rates. ``seed`` (e.g. the rollout number) seeds the requests.
    """
    g = sampling.group_size
    kept: list[RolloutGroup] = []
    uniform: list[RolloutGroup] = []
    stats = CollectStats()
    totals: dict[str, float] = {}
    count = 0
    while len(kept) < num_groups and stats.rounds < max(1, max_rounds):
        need = num_groups - len(kept)
        indices = sampler.sample(need)
        prompts = [encode(items[i]) for i in indices]
        seeds = [request_seed(seed, stats.rounds, j, k) for j in range(need) for k in range(g)]
        flat = [p for p in prompts for _ in range(g)]
        completions = sample_completions(model, tokenizer, flat, sampling, seeds)
        stats.rounds += 1
        for j, index in enumerate(indices):
            group_completions = completions[j * g : (j + 1) * g]
            scores: dict[str, list[float]] = {}
            for c in group_completions:
                result = reward_fn(items[index], c)
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
