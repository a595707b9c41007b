"""GRPO's data for the training loop: `GRPORollouts` turns the policy's group rollouts into
micro-batches (see `lmforge.align.grpo_trainer` for the whole method).

    data = GRPORollouts(model, tok, problems, reward_fn, config.grpo, batch_size=32,
                        grad_accum=2, seed=0, rank=dist.rank, world_size=dist.world_size)
    Trainer(model, data, config, objective=GRPOObjective(config.grpo)).fit()

Each rollout samples ``batch_size × grad_accum / group_size`` prompts per rank (under
torchrun each rank its slice of the step's prompts, `lmforge.align.rl_distributed`), a group
of completions each (`lmforge.align.rollout_groups`), scores them with ``reward_fn`` and
computes group-relative advantages (`grpo_advantages`); the rollout's statistics (mean
reward and its parts, accuracy, length, dropped groups — over every rank) ride along in
each micro-batch as 0-dim ``rollout_*`` tensors for the objective to log. One inference
engine serves every rollout (`lmforge.align.rollout.RolloutEngine`: weights refreshed before
each, inverse-CDF draws, optionally its compiled decode step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from lmforge.align.grpo import grpo_advantages
from lmforge.align.grpo_config import GRPOSection, rollout_sampling
from lmforge.align.reference import Reference, reference_model
from lmforge.align.rl_distributed import (
    RolloutWeights,
    ShardedSampler,
    global_means,
    global_sums,
    sync_sampler,
)
from lmforge.align.rl_tasks import r1_prompt_ids
from lmforge.align.rollout import (
    Completion,
    RolloutEngine,
    policy_logprobs,
    request_seed,
    rollout_tensors,
)
from lmforge.align.rollout_groups import CollectStats, PromptSampler, RolloutGroup, collect_groups
from lmforge.train.objective import Batch

__all__ = ["STAT_PREFIX", "GRPORollouts", "rollout_statistics"]

STAT_PREFIX = "rollout_"  # batch keys the objective logs as per-step rollout statistics


def rollout_statistics(
    groups: Sequence[RolloutGroup], lengths: Sequence[int], stats: CollectStats,
    device: torch.device | str = "cpu",
) -> dict[str, float]:  # fmt: skip
    """The step's rollout statistics over every rank (all-reduced under torch.distributed):
    the mean of each score and of the completion length over the kept completions, the
    dropped groups (a total) and the mean reward over every sampled group (``sampled_reward``,
    before dynamic sampling drops any)."""
    g = len(groups[0].completions)
    sums = {k: sum(v for group in groups for v in group.scores[k]) for k in groups[0].scores}
    sums["length"] = float(sum(lengths))
    sampled = stats.sampled_groups * g
    logged = global_means(sums, float(len(lengths)), device)
    totals = global_sums({"dropped_groups": float(stats.dropped_groups),
                          "sampled_reward": stats.scores.get("reward", 0.0) * sampled,
                          "sampled": float(sampled)}, device)  # fmt: skip
    logged["dropped_groups"] = totals["dropped_groups"]
    logged["sampled_reward"] = totals["sampled_reward"] / max(totals["sampled"], 1.0)
    return logged


class GRPORollouts:
    """Endless micro-batches of GRPO rollouts for the training loop (see module docstring).

    Each micro-batch holds ``input_ids`` / ``labels`` ``[b, T]``, ``advantages`` ``[b]``,
    ``old_logps`` (μ > 1) / ``ref_logps`` (β > 0) ``[b, T]``, and 0-dim ``rollout_*`` tensors
    (the whole rollout's mean reward, accuracy, … for logging). ``compile_decode``: the
    rollout engine runs its compiled decode step (`lmforge.infer.decode_step`; compiled at
    the first rollouts, then reused since the weights are its inputs).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        items: Sequence[Any],
        reward_fn: Callable[[Any, Completion], dict[str, float]],
        section: GRPOSection,
        batch_size: int,
        grad_accum: int,
        seed: int = 0,
        *,
        encode: Callable[[Any], list[int]] | None = None,
        reference: Reference = None,
        pad_id: int = 0,
        rank: int = 0,
        world_size: int = 1,
        rollout_weights: RolloutWeights | None = None,
        compile_decode: bool | str = False,
    ) -> None:
        self.model, self.tokenizer, self.items = model, tokenizer, list(items)
        self.reward_fn, self.section = reward_fn, section
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, seed
        self.encode = encode or (lambda item: r1_prompt_ids(tokenizer, item, section.system_prompt))
        self.reference, self.pad_id = reference, pad_id
        self.sampling = rollout_sampling(section)
        self.sampler = PromptSampler(len(self.items), seed, section.prioritized)
        self.rank, self.world_size = rank, world_size
        self.weights = rollout_weights or RolloutWeights(model)
        # One engine for every rollout (inverse-CDF draws; ``compile_decode``: its compiled
        # decode step, compiled at the first rollouts and reused).
        self.engine = RolloutEngine(compile_decode=compile_decode)
        self.rollouts = 0  # rollouts generated
        self._buffer: list[Batch] = []
        self._position = 0
        self._sampler_at_rollout = self.sampler.state_dict()
        self._skip = 0
        self.last_stats: dict[str, float] = {}

    @property
    def sequences_per_rollout(self) -> int:
        """This rank's sequences per rollout (the step's are ``world_size`` times more)."""
        return self.batch_size * self.grad_accum

    def __iter__(self) -> Iterator[Batch]:
        while True:
            if self._position >= len(self._buffer):
                self._buffer, self._position = self._generate(), self._skip
                self._skip = 0
            batch = self._buffer[self._position]
            self._position += 1
            yield batch

    def _generate(self) -> list[Batch]:
        """One rollout, as ``iterations × grad_accum`` micro-batches (this rank's groups)."""
        s = self.section
        self._sampler_at_rollout = self.sampler.state_dict()
        num_groups = self.sequences_per_rollout // s.group_size
        sharded = self.world_size > 1
        sampler = (
            ShardedSampler(self.sampler, self.rank, self.world_size) if sharded else self.sampler
        )
        policy = self.weights.refresh()  # collective under FSDP
        groups, stats = collect_groups(
            policy, self.tokenizer, self.items, self.encode, self.reward_fn, sampler,
            self.sampling, num_groups, seed=request_seed(self.seed, self.rollouts),
            dynamic_sampling=s.dynamic_sampling, max_rounds=s.max_sampling_rounds,
            group_offset=self.rank * num_groups, engine=self.engine,
        )  # fmt: skip
        if sharded:
            sync_sampler(sampler)
        self.rollouts += 1
        rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float32)
        advantages = grpo_advantages(rewards, s.group_size, s.scale)
        completions = [c for g in groups for c in g.completions]
        lengths = [len(c.completion_ids) for c in completions]
        device = next(policy.parameters()).device
        logged = rollout_statistics(groups, lengths, stats, device)
        self.last_stats = logged
        # Length-sorted micro-batches: less padding; the loss sums make the order irrelevant.
        order = sorted(
            range(len(completions)), key=lambda i: len(completions[i].prompt_ids) + lengths[i]
        )
        micro = []
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = rollout_tensors([completions[i] for i in rows], self.pad_id)
            batch["advantages"] = advantages[rows]
            batch["rewards"] = rewards[rows]
            batch["group_ids"] = torch.tensor(rows) // s.group_size  # group within the rollout
            on_device = {k: v.to(device) for k, v in batch.items()}
            if s.iterations > 1:
                batch["old_logps"] = policy_logprobs(policy, on_device, s.temperature).cpu()
            if s.beta > 0:
                batch["ref_logps"] = self.reference_logprobs(on_device, policy).cpu()
            for key, value in logged.items():
                batch[STAT_PREFIX + key] = torch.tensor(value, dtype=torch.float64)
            micro.append(batch)
        return micro * s.iterations

    def reference_logprobs(self, batch: Batch, policy: nn.Module | None = None) -> torch.Tensor:
        """``[b, T]`` log-probs of the sampled tokens under the reference policy (``policy``:
        the module whose adapters an ``"adapter"`` reference disables; default the model)."""
        if self.reference is None:
            raise ValueError("grpo.beta > 0 needs a reference policy")
        device = batch["input_ids"].device
        with reference_model(self.reference, policy or self.model, device) as ref:
            return policy_logprobs(ref, batch, self.section.temperature)

    def state_dict(self) -> dict[str, Any]:
        if self._position >= len(self._buffer):  # at a rollout boundary
            return {"sampler": self.sampler.state_dict(), "rollouts": self.rollouts, "position": 0}
        return {
            "sampler": self._sampler_at_rollout,
            "rollouts": self.rollouts - 1,
            "position": self._position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.rollouts = int(state["rollouts"])
        self._buffer, self._position = [], 0
        self._skip = int(state.get("position", 0))
