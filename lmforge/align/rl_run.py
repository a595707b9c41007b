"""RL runs from a config alone (``lmforge grpo``, ``lmforge ppo``, the R1 demo): load the
``model.init_from`` checkpoint and its tokenizer, add the adapter, run the trainer
(`lmforge.align.grpo_trainer.train_grpo`, `lmforge.align.ppo_trainer.train_ppo`) into
``out_dir`` — in one process, or under ``torchrun`` on several (each rank samples its share
of the prompts, `lmforge.align.rl_distributed`) — and print the summary.

    config = load_config("recipes/grpo-tiny.yaml", ['model.init_from="runs/sft/model"'],
                         GRPOConfig)
    summary = run_grpo(config)     # eval_before / eval_after: held-out accuracy
    summary = run_ppo(load_config("recipes/ppo-tiny.yaml", [...], PPOConfig))

The run folder is the one of SFT (config.yaml, metrics.jsonl, training.png, checkpoints/,
model/) plus ``eval.jsonl`` (GRPO: held-out accuracy over the run) or ``critic/`` (PPO: the
value model). Running the same config again resumes from the latest checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.align.grpo_trainer import GRPOConfig, train_grpo
from lmforge.align.ppo_config import PPOConfig
from lmforge.align.ppo_trainer import train_ppo
from lmforge.config import ConfigError
from lmforge.models.hf import load_model
from lmforge.models.transformer import CausalLM
from lmforge.peft.settings import PeftSettings, apply_peft
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.run import check_vocab, init_model_dir, print_summary, training_run


def load_policy(
    config: RunConfig, what: str, peft: PeftSettings | None
) -> tuple[CausalLM, Tokenizer, Path]:
    """``model.init_from`` in fp32 with its tokenizer (``data.tokenizer`` overrides it) and,
    with ``peft``, the adapter added (only it will train)."""
    model_dir = init_model_dir(config, what)
    tokenizer = load_tokenizer(config.data.tokenizer or model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    check_vocab(model_dir, tokenizer, model.config.vocab_size)
    apply_peft(model, peft, str(model_dir))
    return model, tokenizer, model_dir


def run_grpo(
    config: GRPOConfig,
    *,
    peft: PeftSettings | None = None,
    dist: DistInfo | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """GRPO on ``model.init_from`` (with ``peft``: the adapter only); returns `train_grpo`'s
    summary."""
    with training_run(config, dist, console) as (dist, console):
        model, tokenizer, _ = load_policy(config, "grpo", peft)
        summary = train_grpo(config, model, tokenizer, run_dir=Path(config.out_dir), dist=dist,
                             console=console)  # fmt: skip
        print_grpo_summary(summary, console)
    return summary


def print_grpo_summary(summary: dict[str, Any], console: Console) -> None:
    """Steps, held-out accuracy and format rate (or mean reward) before → after, and where
    things are."""
    before, after = summary["eval_before"], summary["eval_after"]
    console.rule("[bold]summary")
    if before is None or after is None:
        held_out = "no held-out prompts (data.val_fraction=0)"
    elif "accuracy" in before:
        held_out = (
            f"held-out accuracy {100 * before['accuracy']:.1f}% → {100 * after['accuracy']:.1f}%, "
            f"format {100 * before['format']:.1f}% → {100 * after['format']:.1f}%"
        )
    else:
        held_out = f"held-out reward {before['reward']:.3f} → {after['reward']:.3f}"
    console.print(
        f"steps {summary['step']} ({summary['stop_reason']}), "
        f"{summary['elapsed_s']:.0f} s\n{held_out}\n"
        f"model      {summary['model_dir']}\nmetrics    {summary.get('metrics')}",
        highlight=False,
    )


def run_ppo(
    config: PPOConfig,
    *,
    peft: PeftSettings | None = None,
    dist: DistInfo | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """PPO on ``model.init_from`` (with ``peft``: the adapter only) with the reward of
    ``config.ppo`` (rule rewards, or ``ppo.reward=model`` with ``ppo.reward_model``);
    returns `train_ppo`'s summary (``model_dir``, ``critic_dir``)."""
    if config.ppo.reward == "model" and not config.ppo.reward_model:
        raise ConfigError("ppo.reward=model needs --reward-model DIR (or ppo.reward_model)")
    with training_run(config, dist, console) as (dist, console):
        policy, tokenizer, _ = load_policy(config, "ppo", peft)
        summary = train_ppo(config, policy, tokenizer, run_dir=Path(config.out_dir), dist=dist,
                            console=console)  # fmt: skip
        print_summary(summary, console)
        console.print(f"critic     {summary['critic_dir']}", highlight=False)
    return summary
