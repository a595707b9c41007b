"""The models and scorers of PPO (InstructGPT, Ouyang et al. 2022; PPO-max, Zheng et al. 2023).

    ac = ActorCritic(policy, critic_from(policy))     # critic: a separate value model
    scorer = rule_scorer("task")                      # or RewardModelScorer(reward_model)

- **Actor and critic.** The critic is a *separate* value model — `RewardModel`'s layout (a
  transformer body + ``score`` head) read at every position instead of the last one
  (`token_values`). InstructGPT and PPO-max initialise it from the reward model; with rule
  rewards it starts from the policy's weights with a fresh head (`critic_from`). A separate
  critic keeps the value regression from pulling on the policy's features (a shared-body
  value head trades that for memory). `ActorCritic` holds both in one module — the policy's
  parameters under their HF names, the critic under ``critic.*`` — so the loop's single
  optimizer, checkpoints (the whole module, LoRA parameters included) and DDP see one model.
- **Prompts and scores.** A `PromptItem` is a prompt's token ids and the task problem a rule
  reward checks; a scorer maps rollout `Sample` s to scalar scores: `rule_scorer` (the rule
  rewards of `lmforge.align.rewards`), `RewardModelScorer` (a trained `RewardModel`) or
  `combined_scorer` (the user's reward functions, `lmforge.align.custom_rewards`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from lmforge.align.custom_rewards import CombinedReward
from lmforge.align.reward_model import RewardModel
from lmforge.align.rollout import Completion, right_pad
from lmforge.models.transformer import CausalLM, lm_output

__all__ = [
    "ActorCritic",
    "ActorCriticOutput",
    "PromptItem",
    "RewardModelScorer",
    "Sample",
    "Scorer",
    "combined_scorer",
    "critic_from",
    "rule_scorer",
    "shard_critic_blocks",
    "token_values",
]


class ActorCriticOutput(NamedTuple):
    logits: torch.Tensor  # [B, keep, V] policy logits of the last ``keep`` positions
    values: torch.Tensor  # [B, T] critic values at every position
    ptx_loss_sum: torch.Tensor | None  # summed next-token NLL of the ptx batch


def token_values(critic: RewardModel, input_ids: torch.Tensor, attention_mask=None):
    """``[B, T]`` value estimates: the critic's ``score`` head at every position (position t
    values the state after token t, i.e. before the action ``input_ids[:, t + 1]``)."""
    hidden = critic.hidden_states(input_ids, attention_mask=attention_mask)
    return critic.score(hidden).squeeze(-1).float()


class ActorCritic(nn.Module):
    """The policy (`CausalLM`, its parameters under their own names) and a critic
    (`RewardModel` used per token, under ``critic.*``) as one trainable module."""

    def __init__(self, policy: CausalLM, critic: RewardModel) -> None:
        super().__init__()
        self.config = policy.config
        self.generation_config = policy.generation_config
        self.model = policy.model
        self.lm_head = policy.lm_head
        self.critic = critic
        self._policy = (policy,)  # a tuple: not a registered submodule (no duplicate names)

    @property
    def policy(self) -> CausalLM:
        """The policy as a `CausalLM` (sharing this module's parameters)."""
        return self._policy[0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        ptx: dict[str, torch.Tensor] | None = None,
    ) -> ActorCriticOutput:
        """Policy logits, critic values and (with ``ptx``: input_ids, labels, position/document
        ids of a packed LM batch) the policy's summed NLL on it — one forward for DDP."""
        hidden = self.model(input_ids, attention_mask=attention_mask)
        logits = lm_output(hidden, self.lm_head, logits_to_keep=logits_to_keep).logits
        values = token_values(self.critic, input_ids, attention_mask)
        ptx_sum = None
        if ptx is not None:
            inputs = {k: v for k, v in ptx.items() if k != "labels"}
            ptx_sum = lm_output(self.model(**inputs), self.lm_head, ptx["labels"],
                                loss_reduction="sum").loss  # fmt: skip
        return ActorCriticOutput(logits, values, ptx_sum)


def shard_critic_blocks(model: ActorCritic, device: torch.device) -> None:
    """FSDP2 (``fully_shard``) on each of the critic's decoder blocks, on ``device`` — the
    loop's `lmforge.train.distributed.wrap_model` shards the policy's blocks and then the root,
    which would otherwise hold the whole critic as one unit (collective under torchrun)."""
    from torch.distributed.fsdp import fully_shard

    model.critic.to(device)
    for layer in model.critic.model.layers:
        fully_shard(layer)


def critic_from(model: CausalLM | RewardModel) -> RewardModel:
    """A critic initialised from a reward model (a copy, InstructGPT §3.5) or from a policy
    (a copy of its body with a fresh score head)."""
    if isinstance(model, RewardModel):
        return copy.deepcopy(model)
    body = copy.deepcopy(model.model)
    critic = RewardModel(model.config, body=body)
    return critic.to(next(model.parameters()).device)


# ---------------------------------------------------------------------- prompts and scores
@dataclass(frozen=True)
class PromptItem:
    """A prompt: its token ids, and the task ``problem`` a rule reward checks (if any)."""

    prompt_ids: tuple[int, ...]
    problem: Any = None


@dataclass
class Sample:
    """One rollout sample handed to a scorer."""

    item: PromptItem
    completion_ids: list[int]
    text: str  # the decoded completion ("" without a tokenizer)
    finish_reason: str


Scorer = Callable[[list[Sample]], list[float]]


def rule_scorer(kind: str = "task", require_tags: bool = False) -> Scorer:
    """Rule rewards from `lmforge.align.rewards`: ``task`` (the task verifier, or the
    reference ``answer`` through `accuracy_reward` for a data record), ``format`` (R1 format)
    or ``r1`` (format + task, DeepSeek-R1-Zero)."""
    from lmforge.align.rewards import accuracy_reward, format_reward, task_reward
    from lmforge.align.rl_tasks import PromptAnswer

    if kind not in ("task", "format", "r1"):
        raise ValueError(f"rule reward {kind!r}: choose task, format or r1")

    def score(samples: list[Sample]) -> list[float]:
        out = []
        for s in samples:
            value = 0.0
            if kind in ("format", "r1"):
                value += format_reward(s.text).score
            if kind in ("task", "r1"):
                problem = s.item.problem
                if problem is None:
                    raise ValueError("a task reward needs prompts with a problem to check")
                if isinstance(problem, PromptAnswer):
                    if problem.answer is None:
                        raise ValueError(f"{problem.source}: no 'answer' for ppo.reward=task; "
                                         "add one or name your own reward (--reward)")  # fmt: skip
                    value += accuracy_reward(s.text, problem.answer, require_tags).score
                else:
                    value += task_reward(s.text, problem, require_tags).score
            out.append(value)
        return out

    return score


def combined_scorer(reward: CombinedReward) -> Scorer:
    """The user's rewards (`lmforge.align.custom_rewards.CombinedReward`: named functions,
    built-ins, a reward model) as a scorer: each sample's ``reward``."""

    def score(samples: list[Sample]) -> list[float]:
        items = [s.item.problem for s in samples]
        completions = [Completion(list(s.item.prompt_ids), list(s.completion_ids), s.text,
                                  s.finish_reason) for s in samples]  # fmt: skip
        return [r["reward"] for r in reward.score_many(items, completions)]

    return score


class RewardModelScorer:
    """Scores prompt + completion with a `RewardModel` (same tokenizer as the policy)."""

    def __init__(self, reward_model: RewardModel, batch_size: int = 16) -> None:
        self.reward_model = reward_model.eval().requires_grad_(False)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, samples: list[Sample]) -> list[float]:
        device = next(self.reward_model.parameters()).device
        out: list[float] = []
        for i in range(0, len(samples), self.batch_size):
            seqs = [
                list(s.item.prompt_ids) + s.completion_ids for s in samples[i : i + self.batch_size]
            ]
            ids, mask = right_pad(seqs, 0)
            out.extend(self.reward_model(ids.to(device), attention_mask=mask.to(device)).tolist())
        return out
