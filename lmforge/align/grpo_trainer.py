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

`GRPOObjective` evaluates the policy's log-probs of the sampled tokens — each prompt run once
for all its group's completions (`lmforge.align.shared_prompt`) — and `grpo_loss`
(grpo / dr_grpo / dapo / gspo; clip ε_low / ε_high; β · k3 KL). The old-policy log-probs are
``logps.detach()`` for μ = 1 (the on-policy gradient, as TRL does) and are computed once per
rollout otherwise; the reference log-probs (β > 0) are computed once per rollout from a
frozen copy of the initial policy, or — for a LoRA policy — from the same model with its
adapters disabled (`lmforge.align.reference`: no second model). β = 0 loads none.

Rewards (`lmforge.align.grpo_config.grpo_reward`): the built-in R1 rule reward by default;
``grpo.rewards`` (``--reward MODULE:FUNCTION[:WEIGHT]``, several) names the user's own
functions, ``grpo.reward_model`` (``--reward-model DIR``) adds a reward model's score
(`lmforge.align.custom_rewards`). Under torchrun each rank samples its share of the prompts
(`lmforge.align.rl_distributed`): the update equals one process's over the same global batch.

Logged per step (metrics.jsonl): loss, policy_loss, clip_frac, kl (β > 0), entropy, and the
rollout's reward (and each named reward's ``reward_<name>``), accuracy, format, response
length (completion tokens) and dropped groups. Held-out accuracy (or, for rewards without an
accuracy, the mean held-out reward) on ``grpo.eval_prompts`` held-out items goes to ``eval.jsonl`` every ``train.eval_every`` steps: greedy, or with
``grpo.eval_samples`` = k > 0 DeepSeek-R1's pass@1 (k samples per problem at
``grpo.eval_temperature`` / ``grpo.eval_top_p``, averaged).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from lmforge.align.grpo import grpo_loss
from lmforge.align.grpo_config import (  # noqa: F401 - also imported from here (older scripts)
    GRPOConfig,
    GRPOSection,
    check_grpo_config,
    config_task_items,
    eval_rollout_sampling,
    grpo_reward,
    rollout_sampling,
    task_items,
)
from lmforge.align.grpo_rollouts import STAT_PREFIX, GRPORollouts
from lmforge.align.logprobs import masked_sum, model_logprobs
from lmforge.align.reference import make_reference
from lmforge.align.rl_distributed import RolloutWeights, shard_range
from lmforge.align.rl_tasks import evaluate_accuracy, r1_prompt_ids
from lmforge.align.shared_prompt import shared_prompt_logprobs
from lmforge.infer import SamplingParams
from lmforge.train.distributed import DistInfo, all_gather_objects, init_distributed
from lmforge.train.objective import Batch, LossOutput

__all__ = ["GRPOObjective", "describe_eval", "describe_reward", "evaluate_held_out", "train_grpo"]


# ---------------------------------------------------------------------- objective
class GRPOObjective:
    """``(model, batch) -> LossOutput``: `grpo_loss` on the policy's log-probs of the sampled
    tokens, plus the entropy and the batch's rollout statistics as metrics."""

    def __init__(self, section: GRPOSection) -> None:
        self.section = section

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        s = self.section
        ids, labels = batch["input_ids"], batch["labels"]
        # Each prompt once for its whole group when exact (else the padded batch).
        shared = shared_prompt_logprobs(model, ids, labels, True, s.temperature)
        logps, mask, entropy = shared or model_logprobs(
            model, ids, labels, with_entropy=True, temperature=s.temperature
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
    dist: DistInfo | None = None,
    console: Console | None = None,
    eval_items: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Run GRPO with ``config`` on ``model``; returns the Trainer's summary plus held-out
    accuracy before (``eval_before``) and after (``eval_after``) and the eval history (None
    and [] without held-out items). Under torchrun (``dist``) every rank calls it."""
    from lmforge.train.loop import Trainer

    check_grpo_config(config)
    s, t = config.grpo, config.train
    console = console or Console()
    dist = dist or init_distributed(t.device)
    run_dir = Path(run_dir or config.out_dir)
    items = config_task_items(config, "train")
    if eval_items is None:
        eval_items = config_task_items(config, "test")
    encode = lambda item: r1_prompt_ids(tokenizer, item, s.system_prompt)  # noqa: E731
    reward_fn = grpo_reward(s, dist.device)
    fsdp = dist.enabled and t.distributed == "fsdp"
    weights = RolloutWeights(model, copy_for_fsdp=fsdp)
    data = GRPORollouts(
        model, tokenizer, items, reward_fn, s, t.batch_size, t.grad_accum, t.seed,
        encode=encode, reference=make_reference(model, s.beta),
        pad_id=tokenizer.pad_token_id or 0, rank=dist.rank, world_size=dist.world_size,
        rollout_weights=weights, compile_decode=s.compile_decode,
    )  # fmt: skip
    eval_sampling = eval_rollout_sampling(s)
    history: list[dict[str, Any]] = []

    def run_eval(step: int) -> dict[str, Any] | None:
        if not eval_items:
            return None
        result = evaluate_held_out(weights.refresh(), tokenizer, eval_items, encode,
                                   eval_sampling, s.eval_samples, t.seed, reward_fn, dist)  # fmt: skip
        record = {"step": step, **{k: v for k, v in result.items() if k != "samples"}}
        history.append(record)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "eval.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return result

    def callback(trainer, record) -> None:
        if t.eval_every and trainer.step % t.eval_every == 0 and trainer.step < t.max_steps:
            result = run_eval(trainer.step)
            if result is not None:
                console.print(f"step {trainer.step}: held-out {describe_eval(result)}")

    model.to(dist.device)
    before = run_eval(0)
    console.print(
        f"[bold]grpo[/]: {len(items)} train / {len(eval_items)} held-out {s.task} prompts; "
        f"reward {describe_reward(s)}; {dist.world_size} process(es)"
        + (f"; held-out before: {describe_eval(before)}" if before else "")
    )
    trainer = Trainer(model, data, config, objective=GRPOObjective(s), tokenizer=tokenizer,
                      run_dir=run_dir, dist=dist, console=console,
                      callbacks=[callback])  # fmt: skip
    summary = trainer.fit()
    after = run_eval(trainer.step)
    summary.update(eval_before=before, eval_after=after, eval_history=history)
    summary["model_dir"] = str(trainer.export_model(run_dir / "model"))
    return summary


def describe_reward(section: GRPOSection) -> str:
    """``r1`` / the named functions with their weights / ``+ reward model DIR``."""
    parts = list(section.rewards) or ([] if section.reward_model else ["r1"])
    if section.reward_model:
        parts.append(f"{section.reward_model_weight:g} × reward model {section.reward_model}")
    return " + ".join(parts)


def describe_eval(result: dict[str, Any]) -> str:
    """``accuracy 87.5%, format 100.0%, length 12.3`` (or the mean reward without accuracy)."""
    head = (f"accuracy {100 * result['accuracy']:.1f}%, format {100 * result['format']:.1f}%"
            if "accuracy" in result else f"reward {result.get('reward', 0.0):.3f}")  # fmt: skip
    return f"{head}, length {result['length']:.1f}"


def evaluate_held_out(
    model: nn.Module, tokenizer: Any, items: Sequence[Any], encode: Callable[[Any], list[int]],
    sampling: SamplingParams, samples: int, seed: int, reward_fn: Any, dist: DistInfo,
) -> dict[str, Any]:  # fmt: skip
    """`evaluate_accuracy` on this rank's contiguous share of ``items``, the means combined
    over every rank (the same numbers as one process evaluating them all)."""
    lo, hi = shard_range(len(items), dist.rank, dist.world_size)
    result = evaluate_accuracy(model, tokenizer, items[lo:hi], encode, sampling,
                               samples=samples, seed=seed, reward_fn=reward_fn,
                               first_index=lo)  # fmt: skip
    if not dist.enabled:
        return result
    shares = all_gather_objects({k: v for k, v in result.items() if k != "samples"})
    total = sum(sh["count"] for sh in shares)
    keys = [k for k in shares[0] if k != "count" and all(k in sh for sh in shares if sh["count"])]
    merged = {k: sum(sh.get(k, 0.0) * sh["count"] for sh in shares) / max(total, 1) for k in keys}
    return {**merged, "count": total, "samples": result["samples"]}
