"""RLHF with PPO (InstructGPT, Ouyang et al. 2022; the PPO-max tricks of Zheng et al. 2023)
through the one training loop.

    ac = ActorCritic(policy, critic_from(policy))           # critic: a separate value model
    data = PPOExperience(ac, prompts, rule_scorer("task"), cfg.ppo, tokenizer=tok,
                         micro_batch_size=8, grad_accum=1)
    Trainer(ac, data, cfg, objective=PPOObjective(cfg.ppo)).fit()

Pieces (the math is `lmforge.align.ppo`; this file is the wiring):

- **Actor and critic.** The critic is a *separate* value model — `RewardModel`'s layout (a
  transformer body + ``score`` head) read at every position instead of the last one.
  InstructGPT and PPO-max initialise it from the reward model; with rule rewards it starts
  from the policy's weights with a fresh head. A separate critic keeps the value regression
  from pulling on the policy's features (a shared-body value head trades that for memory).
  `ActorCritic` holds both in one module — the policy's parameters under their HF names,
  the critic under ``critic.*`` — so the loop's single optimizer, checkpoints (the whole
  module, LoRA parameters included) and DDP see one model.
- **Reference policy.** A frozen copy of the policy, or — when the policy carries a LoRA
  adapter — the same model with the adapter disabled (`lmforge.peft.disable_adapters`,
  no copy). None when ``kl_coef`` is 0.
- **Experience** (`PPOExperience`, the loop's ``train_data``): when its buffer is empty it
  samples one completion per prompt with the inference engine (the current weights;
  `lmforge.align.rollout.sample_completions`), scores
  them (`rule_scorer` or `RewardModelScorer`), recomputes old log-probs, reference log-probs
  and values with the training forward, normalises and clips the scores (running std),
  shapes the token rewards with the KL penalty (k1 in the reward, or k3 in the loss), and
  computes GAE advantages (whitened) and returns. It then yields ``ppo_epochs`` shuffled
  passes of micro-batches; ``grad_accum`` consecutive micro-batches form one minibatch = one
  optimizer step. ``state_dict`` holds the unfinished rollout itself, so a resumed run
  continues exactly.
- **Objective** (`PPOObjective`): the clipped policy loss + clipped value loss (+ entropy
  bonus, + k3 KL, + PPO-ptx pretraining NLL from an SFT/pretraining batch source), per
  completion token. Rollout statistics ride along in each batch and are logged as metrics:
  ``reward``, ``kl_ref`` (per-sequence k1 KL to the reference), ``response_length``,
  ``explained_variance``, and from the loss ``clip_frac``, ``value_loss``, ``entropy``,
  ``approx_kl``, ``policy_loss``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.align.logprobs import entropy_from_logits, masked_mean, token_logprobs
from lmforge.align.ppo import (
    RunningMeanStd,
    gae_advantages,
    kl_penalized_rewards,
    ppo_loss,
    ptx_loss_sum,
    whiten,
)
from lmforge.align.reward_model import RewardModel
from lmforge.align.rollout import RolloutSampling, sample_completions
from lmforge.models.loss import IGNORE_INDEX, shifted_targets
from lmforge.models.transformer import CausalLM, lm_output
from lmforge.train.config import RunConfig
from lmforge.train.objective import LossOutput

__all__ = [
    "ActorCritic",
    "PPOConfig",
    "PPOExperience",
    "PPOObjective",
    "PPOSection",
    "PromptItem",
    "RewardModelScorer",
    "Sample",
    "critic_from",
    "rule_scorer",
    "token_values",
]


# ---------------------------------------------------------------------- config
@dataclass
class PPOSection:
    """PPO hyper-parameters (``ppo:`` in a recipe). Units: a rollout is ``rollout_batch_size``
    prompts with one completion each; a minibatch (optimizer step) is ``train.batch_size ×
    train.grad_accum`` of them; each rollout is trained on for ``ppo_epochs`` passes."""

    task: Literal["arithmetic", "countdown"] = "arithmetic"  # synthetic prompt source
    num_prompts: int = 1000
    digits: int = 1  # arithmetic operand digits
    chat_template: bool = True  # format prompts with the tokenizer's chat template
    reward: Literal["task", "format", "r1", "model"] = "task"  # model: a reward model folder
    reward_model: str | None = None  # `lmforge rm` output folder (with reward: model)
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
    if errors:
        raise ValueError("invalid PPO config: " + "; ".join(errors))


# ---------------------------------------------------------------------- models
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
    """Rule rewards from `lmforge.align.rewards`: ``task`` (the task verifier), ``format``
    (R1 format) or ``r1`` (format + task, DeepSeek-R1-Zero)."""
    from lmforge.align.rewards import format_reward, task_reward

    if kind not in ("task", "format", "r1"):
        raise ValueError(f"rule reward {kind!r}: choose task, format or r1")

    def score(samples: list[Sample]) -> list[float]:
        out = []
        for s in samples:
            value = 0.0
            if kind in ("format", "r1"):
                value += format_reward(s.text).score
            if kind in ("task", "r1"):
                if s.item.problem is None:
                    raise ValueError("a task reward needs prompts with a problem to check")
                value += task_reward(s.text, s.item.problem, require_tags).score
            out.append(value)
        return out

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
            ids, mask = _right_pad(seqs, 0)
            out.extend(self.reward_model(ids.to(device), attention_mask=mask.to(device)).tolist())
        return out


def _right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask


def _mix(*parts: object) -> int:
    """A stable 63-bit integer from ``parts`` (seeds for requests and shuffles)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ---------------------------------------------------------------------- experience
_TOKEN_FIELDS = ("old_logps", "old_values", "advantages", "returns", "ref_logps")


class PPOExperience:
    """Endless PPO micro-batches for the training loop (see the module docstring).

    Args:
        model: the `ActorCritic` being trained (rollouts use its current weights).
        prompts: the prompt pool; each rollout draws ``rollout_batch_size`` of them (a seeded
            permutation per pass over the pool).
        scorer: ``samples -> scores`` (`rule_scorer`, `RewardModelScorer`, or your own).
        config: the `PPOSection`.
        tokenizer: decodes completions for the scorer and is the engine's (stop strings).
        micro_batch_size, grad_accum: rows per yielded batch and batches per optimizer step.
        reference: the frozen reference policy; default: a frozen copy of the policy, or the
            policy with its adapters disabled when it has LoRA; None when ``kl_coef`` is 0.
        ptx_data: an endless iterable of packed LM batches (``input_ids``, ``labels``,
            ``position_ids``/``document_ids``) with state_dict (needed when ``ptx_coef`` > 0).
    """

    def __init__(
        self,
        model: ActorCritic,
        prompts: Sequence[PromptItem],
        scorer: Scorer,
        config: PPOSection,
        *,
        tokenizer: Any = None,
        micro_batch_size: int = 8,
        grad_accum: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        reference: nn.Module | None | Literal["auto"] = "auto",
        ptx_data: Any = None,
        pad_id: int = 0,
    ) -> None:
        check_ppo_section(config, micro_batch_size, grad_accum)
        if not prompts:
            raise ValueError("PPOExperience needs at least one prompt")
        if config.ptx_coef > 0 and ptx_data is None:
            raise ValueError("ppo.ptx_coef > 0 needs ptx_data (an SFT / pretraining loader)")
        self.model, self.prompts, self.scorer, self.cfg = model, list(prompts), scorer, config
        self.tokenizer, self.pad_id = tokenizer, pad_id
        self.micro, self.accum = micro_batch_size, grad_accum
        self.seed, self.rank, self.world = seed, rank, world_size
        self.ptx_data = ptx_data if config.ptx_coef > 0 else None
        self._ptx_iter = iter(self.ptx_data) if self.ptx_data is not None else None
        self._reference = self._make_reference(reference)
        self.reward_stats = RunningMeanStd()
        self.rollouts = 0  # rollouts generated so far
        self.position = 0  # micro-batches of the current rollout handed out
        self.rows: list[dict[str, Any]] | None = None
        self.stats: dict[str, float] = {}
        self._stash: list[dict[str, torch.Tensor]] = []
        self._stash_key: tuple[int, int] | None = None
        self._ptx_start: Any = None

    # -------------------------------------------------------------- reference policy
    def _make_reference(self, reference: Any) -> Any:
        """Built now, before any step or resume changes the policy's weights."""
        from lmforge.peft import is_peft_model

        if self.cfg.kl_coef == 0 or reference != "auto":
            return None if self.cfg.kl_coef == 0 else reference
        policy = self.model.policy
        if is_peft_model(policy):
            return "adapter"
        return copy.deepcopy(policy).eval().requires_grad_(False)

    def _ref_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        from lmforge.peft import disable_adapters

        if self.cfg.kl_coef == 0:
            return None
        policy = self.model.policy
        if isinstance(self._reference, str) and self._reference == "adapter":
            with disable_adapters(policy):
                return _logps(policy, batch, self.cfg.temperature)
        if self._reference is None:
            raise ValueError("ppo.kl_coef > 0 needs a reference policy")
        device = batch["input_ids"].device
        if next(self._reference.parameters()).device != device:  # the loop moved the policy
            self._reference.to(device)
        return _logps(self._reference, batch, self.cfg.temperature)

    # -------------------------------------------------------------- rollout
    @torch.no_grad()
    def rollout(self) -> None:
        """Sample, score and compute advantages for the next ``rollout_batch_size`` prompts."""
        cfg, r, n = self.cfg, self.rollouts, self.cfg.rollout_batch_size
        first = (r * self.world + self.rank) * n
        items = [self.prompts[self._prompt_index(first + i)] for i in range(n)]
        seeds = [_mix("sample", self.seed, self.rank, r, i) for i in range(n)]
        policy = self.model.policy
        was_training = self.model.training
        self.model.eval()
        try:
            sampling = RolloutSampling(group_size=1, max_new_tokens=cfg.max_new_tokens,
                                       temperature=cfg.temperature, top_p=cfg.top_p,
                                       top_k=cfg.top_k, stop=tuple(cfg.stop))  # fmt: skip
            prompt_ids = [list(i.prompt_ids) for i in items]
            done = sample_completions(policy, self.tokenizer, prompt_ids, sampling, seeds)
            samples = [Sample(item, c.completion_ids, c.text, c.finish_reason)
                       for item, c in zip(items, done, strict=True)]  # fmt: skip
            raw = torch.tensor(self.scorer(samples), dtype=torch.float32)
            if raw.shape != (n,):
                raise ValueError(f"the scorer returned {raw.numel()} scores for {n} samples")
            seqs = [list(s.item.prompt_ids) + s.completion_ids for s in samples]
            prompt_lens = [len(s.item.prompt_ids) for s in samples]
            device = next(self.model.parameters()).device
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logps", "values", "ref")}
            width = max(len(s) for s in seqs)
            for lo in range(0, n, self.micro):
                batch = _collate_ids(seqs[lo : lo + self.micro], prompt_lens[lo : lo + self.micro],
                                     self.pad_id, width)  # fmt: skip
                batch = {k: v.to(device) for k, v in batch.items()}
                parts["logps"].append(_logps(policy, batch, cfg.temperature))
                parts["values"].append(
                    token_values(self.model.critic, batch["input_ids"], batch["attention_mask"])
                )
                ref = self._ref_logps(batch)
                if ref is not None:
                    parts["ref"].append(ref)
        finally:
            self.model.train(was_training)
        logps = torch.cat(parts["logps"]).float()
        values = torch.cat(parts["values"]).float()
        ref = torch.cat(parts["ref"]).float() if parts["ref"] else None
        full = _collate_ids(seqs, prompt_lens, self.pad_id, width)
        mask = (shifted_targets(full["labels"]) != IGNORE_INDEX).to(device)
        values = values * mask
        self._shape(raw.to(device), logps, values, ref, mask, seqs, prompt_lens)

    def _shape(self, raw, logps, values, ref, mask, seqs, prompt_lens) -> None:
        """Scores → token rewards → GAE advantages/returns; store the rows and statistics."""
        cfg = self.cfg
        scores = raw
        if cfg.reward_norm:
            self.reward_stats.update(raw)
            scores = self.reward_stats.normalize(raw, center=cfg.reward_center)
        if cfg.reward_clip:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        beta = 0.0 if cfg.kl_in_loss or ref is None else cfg.kl_coef
        rewards, _ = kl_penalized_rewards(scores.float(), logps, logps if ref is None else ref,
                                          mask, beta, cfg.kl_estimator)  # fmt: skip
        advantages, returns = gae_advantages(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
        lengths = mask.sum(-1).float()
        stats = {
            "reward": raw.float().mean().item(),
            "reward_std": raw.float().std(unbiased=False).item(),
            "score": scores.float().mean().item(),
            "response_length": lengths.mean().item(),
            "explained_variance": explained_variance(values, returns, mask),
            "value_mean": masked_mean(values, mask).item(),
            "return_mean": masked_mean(returns, mask).item(),
        }
        if ref is not None:
            kl_seq = ((logps - ref) * mask).sum(-1)  # k1 summed over each response
            stats["kl_ref"] = kl_seq.mean().item()
        fields = {"old_logps": logps, "old_values": values, "advantages": advantages,
                  "returns": returns, "ref_logps": ref}  # fmt: skip
        rows = []
        for i, seq in enumerate(seqs):
            row: dict[str, Any] = {"input_ids": list(seq), "prompt_len": prompt_lens[i]}
            for key, tensor in fields.items():
                if tensor is not None:
                    row[key] = tensor[i, : len(seq)].detach().cpu().float()
            rows.append(row)
        self.rows, self.stats, self.position = rows, stats, 0
        self.rollouts += 1
        self._stash_key = None

    def _prompt_index(self, draw: int) -> int:
        epoch, pos = divmod(draw, len(self.prompts))
        g = torch.Generator().manual_seed(_mix("prompts", self.seed, epoch))
        return int(torch.randperm(len(self.prompts), generator=g)[pos])

    # -------------------------------------------------------------- batches
    @property
    def micro_per_epoch(self) -> int:
        return self.cfg.rollout_batch_size // self.micro

    @property
    def micro_per_rollout(self) -> int:
        return self.micro_per_epoch * self.cfg.ppo_epochs

    def _rows_of(self, position: int) -> list[dict[str, Any]]:
        epoch, k = divmod(position, self.micro_per_epoch)
        g = torch.Generator().manual_seed(
            _mix("shuffle", self.seed, self.rank, self.rollouts, epoch)
        )
        order = torch.randperm(len(self.rows), generator=g).tolist()
        return [self.rows[i] for i in order[k * self.micro : (k + 1) * self.micro]]

    def _ptx_for(self, position: int) -> tuple[dict[str, torch.Tensor], float, float]:
        """This micro-batch's ptx batch and the minibatch's global RL / ptx token counts."""
        minibatch = position // self.accum
        if self._stash_key != (self.rollouts, minibatch):
            self._ptx_start = self.ptx_data.state_dict()
            self._stash = [next(self._ptx_iter) for _ in range(self.accum)]
            start = minibatch * self.accum
            rl = sum(len(r["input_ids"]) - r["prompt_len"]
                     for p in range(start, start + self.accum) for r in self._rows_of(p))  # fmt: skip
            ptx = sum(
                int((shifted_targets(b["labels"]) != IGNORE_INDEX).sum()) for b in self._stash
            )
            totals = torch.tensor([float(rl), float(ptx)], dtype=torch.float64)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                from lmforge.train.distributed import all_reduce_sum

                totals = all_reduce_sum(totals.to(next(self.model.parameters()).device)).cpu()
            self._totals = (totals[0].item(), totals[1].item())
            self._stash_key = (self.rollouts, minibatch)
        return self._stash[position % self.accum], *self._totals

    def micro_batch(self, position: int) -> dict[str, Any]:
        """Micro-batch ``position`` of the current rollout (right-padded to its longest row)."""
        rows = self._rows_of(position)
        width = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, Any] = _collate_ids([r["input_ids"] for r in rows],
                                             [r["prompt_len"] for r in rows], self.pad_id, width)  # fmt: skip
        for key in _TOKEN_FIELDS:
            if key in rows[0]:
                batch[key] = torch.stack([F.pad(r[key], (0, width - len(r[key]))) for r in rows])
        batch["rollout_stats"] = dict(self.stats)
        if self.ptx_data is not None:
            ptx, rl_total, ptx_total = self._ptx_for(position)
            for key in ("input_ids", "labels", "position_ids", "document_ids"):
                if key in ptx:
                    batch[f"ptx_{key}"] = ptx[key]
            batch["rl_tokens_total"] = torch.tensor(rl_total)
            batch["ptx_tokens_total"] = torch.tensor(ptx_total)
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            if self.rows is None or self.position >= self.micro_per_rollout:
                self.rollout()
            batch = self.micro_batch(self.position)
            self.position += 1
            yield batch

    # -------------------------------------------------------------- exact resume
    def state_dict(self) -> dict[str, Any]:
        """JSON-able: counters, reward statistics, the unfinished rollout's rows and the ptx
        loader's position (at the current minibatch's start if it is half consumed)."""
        live = self.rows is not None and self.position < self.micro_per_rollout
        state: dict[str, Any] = {
            "rollouts": self.rollouts,
            "position": self.position if live else 0,
            "reward_stats": self.reward_stats.state_dict(),
            "stats": dict(self.stats),
            "rows": None,
        }
        if live:
            state["rows"] = [
                {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
                for r in self.rows
            ]
        if self.ptx_data is not None:
            mid = self._stash_key == (self.rollouts, self.position // self.accum)
            state["ptx"] = self._ptx_start if mid else self.ptx_data.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollouts = int(state["rollouts"])
        self.position = int(state["position"])
        self.reward_stats.load_state_dict(state["reward_stats"])
        self.stats = dict(state.get("stats", {}))
        self.rows = None
        if state.get("rows") is not None:
            self.rows = [
                {
                    k: (torch.tensor(v, dtype=torch.float32) if k in _TOKEN_FIELDS else v)
                    for k, v in r.items()
                }  # fmt: skip
                for r in state["rows"]
            ]
        self._stash_key = None
        if self.ptx_data is not None and state.get("ptx") is not None:
            self.ptx_data.load_state_dict(state["ptx"])
            self._ptx_iter = iter(self.ptx_data)


def _collate_ids(seqs, prompt_lens, pad_id: int, width: int) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask``/``labels`` ``[B, width]``, right-padded; labels are
    -100 but on completion tokens."""
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for row, (seq, p) in enumerate(zip(seqs, prompt_lens, strict=True)):
        if len(seq) <= p:
            raise ValueError(f"sample {row} has an empty completion")
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        labels[row, p : len(seq)] = ids[row, p : len(seq)]
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _logps(model: nn.Module, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """``[B, T]`` log-probs of the completion tokens (logits positions), as the objective
    computes them."""
    logits, first = _policy_logits(model, batch)
    logps, _ = token_logprobs(logits / temperature, batch["labels"][:, first:])
    return F.pad(logps, (first, 0))


def _policy_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Logits from the batch's first scored position on (no ``[B, T_prompt, V]`` tensor)."""
    scored = shifted_targets(batch["labels"]) != IGNORE_INDEX
    first = int(scored.any(0).float().argmax())
    keep = batch["input_ids"].shape[1] - first
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    return out.logits, first


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 − Var(R − V) / Var(R)`` over the masked tokens (1: perfect critic; 0 when Var(R)=0)."""
    var_r = masked_mean((returns - masked_mean(returns, mask)).square(), mask)
    if var_r.item() < 1e-12:
        return 0.0
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)).square(), mask)
    return float(1.0 - var_d / var_r)


# ---------------------------------------------------------------------- objective
class PPOObjective:
    """``(ActorCritic, PPO batch) -> LossOutput``: `ppo_loss` per completion token, plus
    PPO-ptx (`ptx_loss_sum`) when the batch carries ``ptx_*`` tensors; rollout statistics
    are passed through as metrics (each weighted by the micro-batch's token count, so the
    loop's Σ metric / Σ count reports them unchanged)."""

    def __init__(self, config: PPOSection) -> None:
        self.cfg = config

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> LossOutput:
        cfg = self.cfg
        labels = batch["labels"]
        first = int((shifted_targets(labels) != IGNORE_INDEX).any(0).float().argmax())
        keep = labels.shape[1] - first
        ptx = None
        if "ptx_input_ids" in batch:
            ptx = {k[4:]: batch[k] for k in ("ptx_input_ids", "ptx_labels", "ptx_position_ids",
                                             "ptx_document_ids") if k in batch}  # fmt: skip
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                    logits_to_keep=keep, ptx=ptx)  # fmt: skip
        logits = out.logits / cfg.temperature
        logps, mask = token_logprobs(logits, labels[:, first:])
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.entropy_coef > 0):
            entropy = entropy_from_logits(logits)
        logps, mask = F.pad(logps, (first, 0)), F.pad(mask, (first, 0), value=False)
        entropy = F.pad(entropy, (first, 0))
        loss = ppo_loss(
            logps,
            batch["old_logps"],
            batch["advantages"],
            mask,
            values=out.values,
            old_values=batch["old_values"],
            returns=batch["returns"],
            clip_eps=cfg.clip_eps,
            value_clip_eps=cfg.value_clip_eps or None,
            vf_coef=cfg.vf_coef,
            entropy=entropy,
            entropy_coef=cfg.entropy_coef,
            ref_logps=batch.get("ref_logps"),
            kl_coef=cfg.kl_coef if cfg.kl_in_loss else 0.0,
        )
        loss_sum, count = loss.loss_sum, loss.count
        metrics = dict(loss.metrics)
        if ptx is not None:
            rl_total, ptx_total = batch["rl_tokens_total"], batch["ptx_tokens_total"]
            loss_sum = loss_sum + ptx_loss_sum(out.ptx_loss_sum, cfg.ptx_coef, rl_total, ptx_total)
            # reported as Σ / N_rl → the batch's mean pretraining NLL
            metrics["ptx_loss"] = ptx_loss_sum(out.ptx_loss_sum.detach(), 1.0, rl_total, ptx_total)
        n = mask.sum().float()
        for key, value in batch.get("rollout_stats", {}).items():
            metrics[key] = n * float(value)
        return LossOutput(loss_sum, count, metrics)
