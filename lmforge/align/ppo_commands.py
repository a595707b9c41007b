"""`lmforge ppo`: RLHF with PPO (InstructGPT / PPO-max) from a reward model or rule rewards.

    lmforge ppo --config recipes/ppo-tiny.yaml --model runs/sft/model
    lmforge ppo --config recipes/ppo-tiny.yaml --model runs/sft/model --reward-model runs/rm/model
    lmforge ppo --config recipes/ppo-tiny.yaml --model ckpt/ --peft lora ppo.kl_coef=0.02

Prompts are the synthetic task's (``ppo.task``: arithmetic / countdown, chat-formatted); the
reward is the task's verifier (``ppo.reward``: task, format, r1) or, with
``--reward-model``, a scalar reward model trained by ``lmforge rm``. The run folder is the
one of ``lmforge sft`` (config.yaml, metrics.jsonl, training.png, checkpoints/ — which hold
policy and critic, so running the command again resumes exactly) plus ``model/`` (the policy;
the adapter with ``--peft``) and ``critic/`` (the value model, an HF
``…ForSequenceClassification`` folder).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch

_EXAMPLES = (
    "  lmforge ppo --config recipes/ppo-tiny.yaml --model runs/sft/model\n"
    "  lmforge ppo --config recipes/ppo-tiny.yaml --model runs/sft/model "
    "--reward-model runs/rm/model\n"
    "  lmforge ppo --config recipes/ppo-tiny.yaml --model ckpt/ --peft lora ppo.kl_coef=0.02\n\n"
    "Rewards: ppo.reward=task | format | r1 (rule rewards on ppo.task prompts) or a reward model\n"
    "(--reward-model). PPO-max: ppo.reward_norm, ppo.reward_clip, ppo.whiten_advantages,\n"
    "ppo.clip_eps, ppo.value_clip_eps, ppo.entropy_coef, ppo.kl_in_loss, ppo.ptx_coef."
)


def add_ppo_commands(commands, subparser) -> None:
    """Register ``ppo`` (``subparser(commands, name, help, examples)``)."""
    p = subparser(
        commands,
        "ppo",
        "RLHF with PPO (InstructGPT / PPO-max): a reward model or rule rewards",
        _EXAMPLES,
    )
    p.add_argument("--config", required=True, metavar="FILE", help="YAML recipe")
    p.add_argument("--model", metavar="DIR", help="HF policy checkpoint (model.init_from)")
    p.add_argument("--reward-model", metavar="DIR", help="lmforge rm output (ppo.reward_model)")
    p.add_argument("--out", metavar="DIR", help="run folder (out_dir)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. ppo.kl_coef=0.02")
    from lmforge.peft.commands import add_peft_arguments

    add_peft_arguments(p)
    p.set_defaults(run=run_ppo)


def run_ppo(args: argparse.Namespace) -> int:
    from lmforge.align.ppo_trainer import PPOConfig
    from lmforge.cli import checkpoint_dir
    from lmforge.models.hf import load_model
    from lmforge.peft.commands import apply_peft_from_args
    from lmforge.tokenizer import load_tokenizer
    from lmforge.train.commands import _config, _setup

    extra = [f"model.init_from={json.dumps(args.model)}"] if args.model else []
    if args.reward_model:
        extra += [f"ppo.reward_model={json.dumps(args.reward_model)}", "ppo.reward=model"]
    config = _config(args, extra, PPOConfig)
    if not config.model.init_from:
        raise ValueError("ppo needs a policy: --model DIR (or model.init_from in the config)")
    if config.ppo.reward == "model" and not config.ppo.reward_model:
        raise ValueError("ppo.reward=model needs --reward-model DIR (or ppo.reward_model)")
    info, console = _setup(config)
    if info.enabled:
        raise ValueError("lmforge ppo runs in one process (rollouts are not sharded yet)")
    model_dir = checkpoint_dir(config.model.init_from)
    tokenizer = load_tokenizer(config.data.tokenizer or model_dir)
    policy = load_model(model_dir, dtype=torch.float32)
    apply_peft_from_args(policy, args, str(model_dir))
    summary = train_ppo(config, policy, tokenizer, run_dir=Path(config.out_dir), dist=info,
                        console=console)  # fmt: skip
    from lmforge.train.metrics import format_summary

    console.rule("[bold]summary")
    console.print(format_summary(summary), highlight=False)
    console.print(f"critic     {summary['critic_dir']}", highlight=False)
    return 0


def task_prompts(config, tokenizer) -> list:
    """The ``ppo.task`` training problems as `PromptItem` s (chat-formatted when the
    tokenizer has a template and ``ppo.chat_template``)."""
    from lmforge.align.ppo_trainer import PromptItem

    p, seed = config.ppo, config.train.seed
    if p.task == "arithmetic":
        from lmforge.data.tasks.arithmetic import arithmetic_problems

        problems = arithmetic_problems(p.num_prompts, seed, "train", p.digits)
    else:
        from lmforge.data.tasks.countdown import countdown_problems

        problems = countdown_problems(p.num_prompts, seed, "train")
    items = []
    for problem in problems:
        if p.chat_template and tokenizer.chat_template:
            messages = [{"role": "user", "content": problem.prompt}]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            ids = tokenizer.encode(text)
        else:
            ids = tokenizer.encode(problem.prompt + "\n", add_special_tokens=True)
        items.append(PromptItem(tuple(ids), problem))
    return items


def _ptx_loader(config, tokenizer, run_dir: Path, info) -> Any:
    """PPO-ptx batches: packed SFT rows from ``ppo.ptx_data`` (or the synthetic chats)."""
    from lmforge.data.formats import load_sft_examples
    from lmforge.data.loader import SFTLoader
    from lmforge.train.commands import _synthetic_chats

    paths = list(config.ppo.ptx_data) or [_synthetic_chats(config, run_dir, info)]
    d, t = config.data, config.train
    examples, _ = load_sft_examples(paths, tokenizer, format=d.format,
                                    assistant_only=d.assistant_only, skip_bad=d.skip_bad,
                                    max_len=d.seq_len, too_long=d.too_long)  # fmt: skip
    if not examples:
        raise ValueError(f"{', '.join(paths)}: no PPO-ptx examples")
    return SFTLoader(examples, d.seq_len, t.batch_size, seed=t.seed,
                     pad_id=tokenizer.pad_token_id or 0)  # fmt: skip


def train_ppo(config, policy, tokenizer, *, run_dir: Path, dist=None, console=None) -> dict:
    """Build critic, reference, scorer and experience for ``policy``, run the loop, and
    export ``model/`` (policy) and ``critic/``; returns the loop's summary."""
    from lmforge.align.ppo_trainer import (
        ActorCritic,
        PPOExperience,
        PPOObjective,
        RewardModelScorer,
        critic_from,
        rule_scorer,
    )
    from lmforge.align.preference_objective import load_reward_model, reward_model_for_export
    from lmforge.models.hf import save_model
    from lmforge.train import checkpoint as ckpt
    from lmforge.train.loop import Trainer

    p, t = config.ppo, config.train
    reward_model = None
    if p.reward == "model":
        reward_model = load_reward_model(p.reward_model, dtype=torch.float32)
        scorer = RewardModelScorer(reward_model, batch_size=t.batch_size)
    else:
        scorer = rule_scorer(p.reward, p.require_tags)
    use_rm = p.critic_init == "reward_model" or (p.critic_init == "auto" and reward_model)
    if use_rm and reward_model is None:
        raise ValueError("ppo.critic_init=reward_model needs a reward model (--reward-model)")
    critic = critic_from(reward_model if use_rm else policy)
    model = ActorCritic(policy, critic)
    ptx = _ptx_loader(config, tokenizer, run_dir, dist) if p.ptx_coef > 0 else None
    experience = PPOExperience(model, task_prompts(config, tokenizer), scorer, p,
                               tokenizer=tokenizer, micro_batch_size=t.batch_size,
                               grad_accum=t.grad_accum, seed=t.seed, ptx_data=ptx,
                               pad_id=tokenizer.pad_token_id or 0)  # fmt: skip
    trainer = Trainer(model, experience, config, objective=PPOObjective(p), tokenizer=tokenizer,
                      run_dir=run_dir, dist=dist, console=console)  # fmt: skip
    if reward_model is not None:  # the scorer follows the policy onto the training device
        reward_model.to(trainer.device)
    if console is not None:
        console.print(
            f"[bold]ppo[/]: policy {policy.num_parameters():,} + critic "
            f"{sum(q.numel() for q in critic.parameters()):,} parameters; reward "
            f"{p.reward_model or p.reward}; {p.rollout_batch_size} prompts per rollout × "
            f"{p.ppo_epochs} epochs; run folder {run_dir}"
        )
    summary = trainer.fit()
    model_dir, critic_dir = run_dir / "model", run_dir / "critic"
    ckpt.write_weights(policy, {}, model_dir, tokenizer)  # the adapter alone with --peft
    export = reward_model_for_export(copy.deepcopy(critic).cpu(), tokenizer.pad_token_id)
    save_model(export, critic_dir, tokenizer=tokenizer)
    summary["model_dir"], summary["critic_dir"] = str(model_dir), str(critic_dir)
    return summary
