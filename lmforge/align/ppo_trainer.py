"""RLHF with PPO (InstructGPT, Ouyang et al. 2022; the PPO-max tricks of Zheng et al. 2023)
through the one training loop.

    config = load_config("recipes/ppo-tiny.yaml", ["model.init_from=runs/sft/model"], PPOConfig)
    summary = train_ppo(config, policy, tokenizer, run_dir=Path("runs/ppo"))

or piece by piece:

    ac = ActorCritic(policy, critic_from(policy))           # critic: a separate value model
    data = PPOExperience(ac, prompts, rule_scorer("task"), cfg.ppo, tokenizer=tok,
                         micro_batch_size=8, grad_accum=1)
    Trainer(ac, data, cfg, objective=PPOObjective(cfg.ppo)).fit()

The math is `lmforge.align.ppo`; the pieces live beside this file:

- `lmforge.align.ppo_config` — `PPOSection` (``ppo:`` in a recipe), `PPOConfig`, range checks;
- `lmforge.align.ppo_models` — `ActorCritic`, `critic_from`, `token_values`, `PromptItem`,
  the scorers (`rule_scorer`, `RewardModelScorer`);
- `lmforge.align.ppo_experience` — `PPOExperience`: rollouts (`lmforge.align.rollout`),
  scores, reference log-probs (`lmforge.align.reference`), values, KL-shaped rewards, GAE,
  micro-batches, exact resume;
- here — `PPOObjective` and the run (under torchrun with DDP or FSDP2; under FSDP2 the
  rollouts and the exported ``model/`` and ``critic/`` use the gathered full weights,
  `lmforge.align.rl_distributed.RolloutWeights`; its checkpoints hold policy and critic, so
  it resumes as under DDP): `task_prompts` (`lmforge.align.rl_tasks`), `ptx_loader`
  and `train_ppo` (critic, reward, experience, loop, export of ``model/`` and ``critic/``).

**Objective** (`PPOObjective`): the clipped policy loss + clipped value loss (+ entropy
bonus, + k3 KL, + PPO-ptx pretraining NLL from an SFT/pretraining batch source), per
completion token. Rollout statistics ride along in each batch and are logged as metrics:
``reward``, ``kl_ref`` (per-sequence k1 KL to the reference), ``response_length``,
``explained_variance``, and from the loss ``clip_frac``, ``value_loss``, ``entropy``,
``approx_kl``, ``policy_loss``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from lmforge.align.custom_rewards import CombinedReward, parse_reward_spec
from lmforge.align.logprobs import entropy_from_logits, token_logprobs
from lmforge.align.ppo import ppo_loss, ptx_loss_sum
from lmforge.align.ppo_config import PPOConfig, PPOSection
from lmforge.align.ppo_experience import PPOExperience
from lmforge.align.ppo_models import (
    ActorCritic,
    PromptItem,
    RewardModelScorer,
    combined_scorer,
    critic_from,
    rule_scorer,
    shard_critic_blocks,
)
from lmforge.align.preference_objective import load_reward_model, reward_model_for_export
from lmforge.align.rl_distributed import RolloutWeights
from lmforge.align.rl_tasks import r1_prompt_ids, task_problems
from lmforge.models.loss import IGNORE_INDEX, shifted_targets
from lmforge.models.transformer import CausalLM
from lmforge.train.distributed import barrier
from lmforge.train.objective import LossOutput

__all__ = [  # from lmforge.align.ppo_models  # from lmforge.align.ppo_config  # from lmforge.align.ppo_experience
    "PPOObjective",  # from lmforge.align.ppo_config  # from lmforge.align.ppo_models  # from lmforge.align.ppo_models  # from lmforge.align.ppo_models
    "ptx_loader",  # from lmforge.align.ppo_models
    "task_prompts",
    "train_ppo",
]


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


# ---------------------------------------------------------------------- the run
def task_prompts(config: PPOConfig, tokenizer: Any) -> list[PromptItem]:
    """The ``ppo.task`` training problems (`lmforge.align.rl_tasks.task_problems`; for
    ``prompts`` every record of ``data.paths`` — PPO holds none out) as `PromptItem` s:
    chat-formatted (`r1_prompt_ids`; conversations as their messages) when the tokenizer has
    a template and ``ppo.chat_template``, else the bare prompt and a newline."""
    p, seed = config.ppo, config.train.seed
    if p.task == "prompts" and not config.data.paths:
        raise ValueError("ppo.task=prompts needs data.paths (--data FILE: JSONL with prompt)")
    problems = task_problems(p.task, "train", p.num_prompts, seed, digits=p.digits,
                             paths=config.data.paths, val_fraction=0.0)  # fmt: skip
    items = []
    for problem in problems:
        if p.chat_template and tokenizer.chat_template:
            ids = r1_prompt_ids(tokenizer, problem)
        elif isinstance(problem.prompt, list):
            raise ValueError(f"{getattr(problem, 'source', '')}: a conversational prompt needs "
                             "the tokenizer's chat template (ppo.chat_template=true)")  # fmt: skip
        else:
            ids = tokenizer.encode(problem.prompt + "\n", add_special_tokens=True)
        items.append(PromptItem(tuple(ids), problem))
    return items


def ptx_loader(config: PPOConfig, tokenizer: Any, run_dir: Path, dist=None) -> Any:
    """PPO-ptx batches: packed SFT rows from ``ppo.ptx_data`` (or the synthetic chats,
    written into ``run_dir`` by `lmforge.train.sft.synthetic_chats_file`)."""
    from lmforge.data.formats import load_sft_examples
    from lmforge.data.loader import SFTLoader
    from lmforge.train.sft import synthetic_chats_file

    paths = list(config.ppo.ptx_data) or [synthetic_chats_file(config, run_dir, dist)]
    d, t = config.data, config.train
    examples, _ = load_sft_examples(paths, tokenizer, format=d.format,
                                    assistant_only=d.assistant_only, skip_bad=d.skip_bad,
                                    max_len=d.seq_len, too_long=d.too_long)  # fmt: skip
    if not examples:
        raise ValueError(f"{', '.join(paths)}: no PPO-ptx examples")
    return SFTLoader(examples, d.seq_len, t.batch_size, seed=t.seed,
                     pad_id=tokenizer.pad_token_id or 0)  # fmt: skip


def train_ppo(
    config: PPOConfig,
    policy: CausalLM,
    tokenizer: Any,
    *,
    run_dir: str | Path,
    dist=None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Build critic, reference, scorer and experience for ``policy``, run the loop, and
    export ``model/`` (policy) and ``critic/``; returns the loop's summary."""
    from lmforge.models.hf import save_model
    from lmforge.train import checkpoint as ckpt
    from lmforge.train.loop import Trainer

    p, t = config.ppo, config.train
    run_dir = Path(run_dir)
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    fsdp = world > 1 and t.distributed == "fsdp"
    reward_model = None
    if p.reward == "model" or (p.rewards and p.reward_model):
        reward_model = load_reward_model(p.reward_model, dtype=torch.float32)
    if p.rewards:  # the user's functions (+ the reward model's score when one is given)
        specs = [parse_reward_spec(x) for x in p.rewards]
        scorer = combined_scorer(CombinedReward(specs, max_new_tokens=p.max_new_tokens,
                                                reward_model=reward_model))  # fmt: skip
    elif reward_model is not None:
        scorer = RewardModelScorer(reward_model, batch_size=t.batch_size)
    else:
        scorer = rule_scorer(p.reward, p.require_tags)
    use_rm = p.critic_init == "reward_model" or (p.critic_init == "auto" and reward_model)
    if use_rm and reward_model is None:
        raise ValueError("ppo.critic_init=reward_model needs a reward model (--reward-model)")
    with torch.random.fork_rng(devices=[]):  # a fresh score head: the same on every rank / run
        torch.manual_seed(t.seed)
        critic = critic_from(reward_model if use_rm else policy)
    model = ActorCritic(policy, critic)
    weights = RolloutWeights(model, copy_for_fsdp=fsdp)  # before the loop shards the model
    ptx = ptx_loader(config, tokenizer, run_dir, dist) if p.ptx_coef > 0 else None
    experience = PPOExperience(model, task_prompts(config, tokenizer), scorer, p,
                               tokenizer=tokenizer, micro_batch_size=t.batch_size,
                               grad_accum=t.grad_accum, seed=t.seed, ptx_data=ptx,
                               pad_id=tokenizer.pad_token_id or 0, rank=rank,
                               world_size=world, rollout_weights=weights)  # fmt: skip
    if fsdp:  # (after the copies: the rollout weights' and the reference's)
        shard_critic_blocks(model, dist.device)
    trainer = Trainer(model, experience, config, objective=PPOObjective(p), tokenizer=tokenizer,
                      run_dir=run_dir, dist=dist, console=console)  # fmt: skip
    if reward_model is not None:  # the scorer follows the policy onto the training device
        reward_model.to(trainer.device)
    if console is not None:
        console.print(
            f"[bold]ppo[/]: policy {policy.num_parameters():,} + critic "
            f"{sum(q.numel() for q in critic.parameters()):,} parameters; reward "
            f"{' + '.join(p.rewards) or p.reward_model or p.reward}"
            + (f" + reward model {p.reward_model}" if p.rewards and p.reward_model else "")
            + f"; {p.rollout_batch_size} prompts per rollout × "
            f"{p.ppo_epochs} epochs; run folder {run_dir}"
        )
    summary = trainer.fit()
    model_dir, critic_dir = run_dir / "model", run_dir / "critic"
    full = weights.refresh()  # FSDP2: the gathered full weights (collective); else the model
    if rank == 0:
        ckpt.write_weights(full.policy, {}, model_dir, tokenizer)  # the adapter alone with --peft
        export = reward_model_for_export(copy.deepcopy(full.critic).cpu(), tokenizer.pad_token_id)
        save_model(export, critic_dir, tokenizer=tokenizer)
    barrier()
    summary["model_dir"], summary["critic_dir"] = str(model_dir), str(critic_dir)
    return summary
