"""GRPO through the one training loop: rollout batches in, `grpo_loss` out.

    config = load_config("recipes/grpo-tiny.yaml", ["model.init_from=runs/sft/model"], GRPOConfig)
    summary = train_grpo(config, model, tokenizer, run_dir="runs/grpo")

Each optimizer step uses one *rollout*: ``P = batch_size × grad_accum / group_size`` prompts
from a task (`lmforge.align.rl_tasks`), ``group_size`` completions each, sampled by the
inference engine (`lmforge.align.rollout`, `lmforge.align.rollout_groups`), scored by rule
rewards (`r1_reward`: R1 format, answer accuracy through the task's verifier, DAPO's
overlong penalty) and turned into group-relative advantages (`grpo_advantages`). `GRPORollouts` is the loop's data iterable: it
generates a rollout, splits it into length-sorted, right-padded micro-batches of
``batch_size`` sequences and yields them ``iterations`` (μ) times; its state (prompt sampler
position and success rates, rollout count) is JSON and resumes exactly at rollout
boundaries (with μ > 1 a mid-rollout resume re-samples that rollout under the saved weights).

`GRPOObjective` evaluates the policy's log-probs of the sampled tokens and `grpo_loss`
(grpo / dr_grpo / dapo / gspo; clip ε_low / ε_high; β · k3 KL). The old-policy log-probs are
``logps.detach()`` for μ = 1 (the on-policy gradient, as TRL does) and are computed once per
rollout otherwise; the reference log-probs (β > 0) are computed once per rollout from a
frozen copy of the initial policy, or — for a LoRA policy — from the same model with its
adapters disabled (`lmforge.align.reference`: no second model). β = 0 loads none.

Logged per step (metrics.jsonl): loss, policy_loss, clip_frac, kl (β > 0), entropy, and the
rollout's reward, accuracy, format, response length (completion tokens) and dropped groups.
Held-out accuracy goes to ``eval.jsonl`` every ``train.eval_every`` steps: greedy, or with
``grpo.eval_samples`` = k > 0 DeepSeek-R1's pass@1 (k samples per problem at
``grpo.eval_temperature`` / ``grpo.eval_top_p``, averaged).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from torch import nn

from lmforge.align.grpo import AGGREGATIONS, grpo_advantages, grpo_loss
from lmforge.align.logprobs import masked_sum, model_logprobs
from lmforge.align.reference import Reference, make_reference, reference_model
from lmforge.align.rl_tasks import evaluate_accuracy, r1_prompt_ids, r1_reward, task_problems
from lmforge.align.rollout import (
    Completion,
    check_rollout_sampling,
    policy_logprobs,
    request_seed,
    rollout_tensors,
)
from lmforge.align.rollout_groups import PromptSampler, collect_groups
from lmforge.config import ConfigError
from lmforge.infer import SamplingParams
from lmforge.train.config import RunConfig
from lmforge.train.objective import Batch, LossOutput

__all__ = [
    "GRPOConfig",
    "GRPOObjective",
    "GRPORollouts",
    "GRPOSection",
    "check_grpo_config",
    "eval_rollout_sampling",  # from lmforge.align.rl_tasks  # from lmforge.align.rl_tasks
    "rollout_sampling",
    "task_items",
    "train_grpo",
]

STAT_PREFIX = "rollout_"  # batch keys the objective logs as per-step rollout statistics


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
        raise ConfigError("grpo.task=prompts needs data.paths (JSONL with prompt and answer)")


# ---------------------------------------------------------------------- task and sampling
def task_items(section: GRPOSection, split: str, n: int, seed: int, paths=()) -> list[Any]:
    """``n`` problems of the configured task (``split`` "train" or "test";
    `lmforge.align.rl_tasks.task_problems`)."""
    return task_problems(
        section.task, split, n, seed, digits=section.digits, ops=section.ops,
        num_numbers=section.num_numbers, max_number=section.max_number,
        max_target=section.max_target, paths=paths,
    )  # fmt: skip


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


# ---------------------------------------------------------------------- data
class GRPORollouts:
    """Endless micro-batches of GRPO rollouts for the training loop (see module docstring).

    Each micro-batch holds ``input_ids`` / ``labels`` ``[b, T]``, ``advantages`` ``[b]``,
    ``old_logps`` (μ > 1) / ``ref_logps`` (β > 0) ``[b, T]``, and 0-dim ``rollout_*`` tensors
    (the whole rollout's mean reward, accuracy, … for logging).
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
    ) -> None:
        self.model, self.tokenizer, self.items = model, tokenizer, list(items)
        self.reward_fn, self.section = reward_fn, section
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, seed
        self.encode = encode or (lambda item: r1_prompt_ids(tokenizer, item, section.system_prompt))
        self.reference, self.pad_id = reference, pad_id
        self.sampling = rollout_sampling(section)
        self.sampler = PromptSampler(len(self.items), seed, section.prioritized)
        self.rollouts = 0  # rollouts generated
        self._buffer: list[Batch] = []
        self._position = 0
        self._sampler_at_rollout = self.sampler.state_dict()
        self._skip = 0
        self.last_stats: dict[str, float] = {}

    @property
    def sequences_per_rollout(self) -> int:
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
        """One rollout, as ``iterations × grad_accum`` micro-batches."""
        s = self.section
        self._sampler_at_rollout = self.sampler.state_dict()
        num_groups = self.sequences_per_rollout // s.group_size
        groups, stats = collect_groups(
            self.model, self.tokenizer, self.items, self.encode, self.reward_fn, self.sampler,
            self.sampling, num_groups, seed=request_seed(self.seed, self.rollouts),
            dynamic_sampling=s.dynamic_sampling, max_rounds=s.max_sampling_rounds,
        )  # fmt: skip
        self.rollouts += 1
        rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float32)
        advantages = grpo_advantages(rewards, s.group_size, s.scale)
        completions = [c for g in groups for c in g.completions]
        lengths = [len(c.completion_ids) for c in completions]
        kept_scores = {k: [v for g in groups for v in g.scores[k]] for k in groups[0].scores}
        logged = {k: sum(v) / len(v) for k, v in kept_scores.items()}
        logged["length"] = sum(lengths) / len(lengths)
        logged["dropped_groups"] = float(stats.dropped_groups)
        logged["sampled_reward"] = stats.scores.get("reward", 0.0)
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
            device = next(self.model.parameters()).device
            on_device = {k: v.to(device) for k, v in batch.items()}
            if s.iterations > 1:
                batch["old_logps"] = policy_logprobs(self.model, on_device, s.temperature).cpu()
            if s.beta > 0:
                batch["ref_logps"] = self.reference_logprobs(on_device).cpu()
            for key, value in logged.items():
                batch[STAT_PREFIX + key] = torch.tensor(value, dtype=torch.float64)
            micro.append(batch)
        return micro * s.iterations

    def reference_logprobs(self, batch: Batch) -> torch.Tensor:
        """``[b, T]`` log-probs of the sampled tokens under the reference policy."""
        if self.reference is None:
            raise ValueError("grpo.beta > 0 needs a reference policy")
        device = batch["input_ids"].device
        with reference_model(self.reference, self.model, device) as ref:
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


# ---------------------------------------------------------------------- objective
class GRPOObjective:
    """``(model, batch) -> LossOutput``: `grpo_loss` on the policy's log-probs of the sampled
    tokens, plus the entropy and the batch's rollout statistics as metrics."""

    def __init__(self, section: GRPOSection) -> None:
        self.section = section

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        s = self.section
        logps, mask, entropy = model_logprobs(
            model, batch["input_ids"], batch["labels"], with_entropy=True, temperature=s.temperature
        )
        old = batch.get("old_logps")
        out = grpo_loss(
            logps,
            logps.detach() if old is None else old.to(logps.dtype),
            batch["advantages"],
            mask,
            aggregation=s.aggregation,
            eps_low=s.eps_low,
            eps_high=s.eps_high,
            beta=s.beta,
            ref_logps=batch.get("ref_logps"),
            max_completion_length=s.max_new_tokens,
        )
        out.metrics["entropy"] = self._reduce(entropy.detach(), mask)
        count = torch.as_tensor(out.count, dtype=torch.float64)
        for key, value in batch.items():
            if key.startswith(STAT_PREFIX):  # per-rollout value × units: the loop's mean is it
                out.metrics[key.removeprefix(STAT_PREFIX)] = value.double() * count
        return out

    def _reduce(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` in the loss's units (as `grpo_loss` reduces its metrics)."""
        agg = self.section.aggregation
        if agg in ("grpo", "gspo"):
            return (masked_sum(x, mask, dim=-1) / mask.sum(-1).clamp(min=1)).sum()
        if agg == "dr_grpo":
            return masked_sum(x, mask) / self.section.max_new_tokens
        return masked_sum(x, mask)


# ---------------------------------------------------------------------- the run
def train_grpo(
    config: GRPOConfig,
    model: nn.Module,
    tokenizer: Any,
    *,
    run_dir: str | Path | None = None,
    dist=None,
    console: Console | None = None,
    eval_items: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Run GRPO with ``config`` on ``model``; returns the Trainer's summary plus held-out
    accuracy before (``eval_before``) and after (``eval_after``) and the eval history."""
    from lmforge.train.loop import Trainer

    check_grpo_config(config)
    s, t = config.grpo, config.train
    console = console or Console()
    run_dir = Path(run_dir or config.out_dir)
    items = task_items(s, "train", s.num_prompts, t.seed, config.data.paths)
    if eval_items is None:
        eval_items = task_items(s, "test", s.eval_prompts, t.seed, config.data.paths)
    encode = lambda item: r1_prompt_ids(tokenizer, item, s.system_prompt)  # noqa: E731
    reward_fn = lambda item, c: r1_reward(  # noqa: E731
        item, c, s.format_weight, s.max_new_tokens, s.overlong_cache
    )
    data = GRPORollouts(
        model, tokenizer, items, reward_fn, s, t.batch_size, t.grad_accum, t.seed,
        encode=encode, reference=make_reference(model, s.beta),
        pad_id=tokenizer.pad_token_id or 0,
    )  # fmt: skip
    eval_sampling = eval_rollout_sampling(s)
    history: list[dict[str, Any]] = []

    def run_eval(step: int) -> dict[str, Any]:
        result = evaluate_accuracy(model, tokenizer, eval_items, encode, eval_sampling,
                                   samples=s.eval_samples, seed=t.seed)  # fmt: skip
        record = {"step": step, **{k: v for k, v in result.items() if k != "samples"}}
        history.append(record)
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "eval.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return result

    def callback(trainer, record) -> None:
        if t.eval_every and trainer.step % t.eval_every == 0 and trainer.step < t.max_steps:
            result = run_eval(trainer.step)
            console.print(
                f"step {trainer.step}: held-out accuracy {100 * result['accuracy']:.1f}%, "
                f"format {100 * result['format']:.1f}%, length {result['length']:.1f}"
            )

    before = run_eval(0)
    console.print(
        f"[bold]grpo[/]: {len(items)} train / {len(eval_items)} held-out {s.task} problems; "
        f"held-out accuracy before: {100 * before['accuracy']:.1f}%"
    )
    trainer = Trainer(model, data, config, objective=GRPOObjective(s), tokenizer=tokenizer,
                      run_dir=run_dir, dist=dist, console=console,
                      callbacks=[callback])  # fmt: skip
    summary = trainer.fit()
    after = run_eval(trainer.step)
    summary.update(eval_before=before, eval_after=after, eval_history=history)
    summary["model_dir"] = str(trainer.export_model(run_dir / "model"))
    return summary
