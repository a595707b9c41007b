"""RL on several processes (``torchrun``, DDP or FSDP2): what GRPO and PPO add to the
distributed training loop (`lmforge.train.distributed`, `lmforge.train.loop`).

    torchrun --nproc_per_node 2 -m lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/

Each rank samples its share of the step's prompts with its own inference engine; the
gradients are averaged by the loop as for any objective, so a run on W processes with
``train.batch_size`` = b per rank makes the same update as one process with b·W (same seeds):

- **Prompts** (`ShardedSampler`): every rank runs the same `PromptSampler` and draws the
  whole step's prompts, then keeps its contiguous slice — whole groups on one rank, so GRPO's
  group-relative advantages need no communication; the request seeds follow each group's
  position in the whole step (``group_offset``), so a completion is the one the single
  process would sample. Kimi's prioritised sampling stays identical on every rank: the
  success rates each rank saw are gathered and applied everywhere (`sync_sampler`).
- **Statistics** (`global_means`, `global_sums`): the rollout's reward, accuracy, length, … are all-reduced
  so every rank logs the means over the whole step.
- **PPO** (`lmforge.align.ppo_experience`) gathers the whole step's rollout on every rank
  instead, so reward normalisation and advantage whitening see every sample, and splits each
  shared micro-batch across the ranks.
- **Weights** (`RolloutWeights`): under DDP every rank holds the full model and its engine
  reads the weights after each optimizer step; under FSDP2 the parameters are shards, so
  before each rollout the full weights are gathered (collective) into a plain copy of the
  policy (PPO: of the actor-critic) that the engine, the old-policy and the reference
  log-probs (PPO: and the values) use.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lmforge.align.rollout_groups import PromptSampler
from lmforge.train.distributed import all_gather_objects, all_reduce_sum, is_fsdp

__all__ = [
    "RolloutWeights",
    "ShardedSampler",
    "global_means",
    "global_sums",
    "shard_range",
    "sync_sampler",
]


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)``: rank's contiguous share of ``n`` items (the first ``n % world`` ranks get
    one more)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class ShardedSampler:
    """A rank's view of a `PromptSampler` that every rank runs identically: ``sample(n)``
    draws ``n × world`` indices (the whole step) and returns this rank's ``n``; ``update``
    records locally (`sync_sampler` applies every rank's records everywhere)."""

    def __init__(self, sampler: PromptSampler, rank: int, world: int) -> None:
        self.sampler, self.rank, self.world = sampler, rank, world
        self.pending: list[tuple[int, float]] = []

    def sample(self, n: int) -> list[int]:
        indices = self.sampler.sample(n * self.world)
        return indices[self.rank * n : (self.rank + 1) * n]

    def update(self, index: int, success_rate: float) -> None:
        self.pending.append((int(index), float(success_rate)))


def sync_sampler(sharded: ShardedSampler) -> None:
    """Apply every rank's success-rate updates, in rank order (= the single process's order
    of groups), to the shared sampler (collective)."""
    for updates in all_gather_objects(sharded.pending):
        for index, rate in updates:
            sharded.sampler.update(index, rate)
    sharded.pending = []


def global_sums(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """``Σ_ranks values[k]`` for every key (the same keys on every rank; collective under
    torch.distributed, the values themselves otherwise)."""
    keys = sorted(values)
    totals = all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64,
                                         device=device)).cpu()  # fmt: skip
    return {k: totals[i].item() for i, k in enumerate(keys)}


def global_means(
    sums: dict[str, float], count: float, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """``Σ_ranks sums[k] / Σ_ranks count`` for every key (the same keys on every rank;
    collective under torch.distributed, plain division otherwise)."""
    totals = global_sums({**sums, "\0count": count}, device)
    n = max(totals.pop("\0count"), 1e-12)
    return {k: v / n for k, v in totals.items()}


class RolloutWeights:
    """The module rollouts run on: the policy itself, or — when the policy is sharded by
    FSDP2 — a plain copy refreshed with the gathered full weights (`refresh`, collective).

    Make it before the loop wraps the policy (``copy_for_fsdp=True`` keeps a deep copy, adapters
    included, for the gathered weights)."""

    def __init__(self, policy: nn.Module, copy_for_fsdp: bool = False) -> None:
        self.policy = policy
        self.copy = copy.deepcopy(policy).requires_grad_(False) if copy_for_fsdp else None

    def refresh(self) -> nn.Module:
        """The module with the current weights (gathers them under FSDP2: every rank calls it
        at the same point)."""
        if not is_fsdp(self.policy):
            return self.policy
        if self.copy is None:
            raise ValueError("an FSDP-sharded policy needs RolloutWeights(copy_for_fsdp=True)")
        state = {  # every rank gathers every tensor (the same order everywhere)
            name: t.full_tensor() if hasattr(t, "full_tensor") else t
            for name, t in self.policy.state_dict().items()
        }
        self.copy.to(_device_of(self.policy)).load_state_dict(state)
        return self.copy


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters())
    local = getattr(p, "to_local", None)  # a DTensor shard lives on this rank's device
    return local().device if local is not None else p.device
