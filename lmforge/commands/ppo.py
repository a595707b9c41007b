"""`lmforge ppo`: RLHF with PPO (InstructGPT / PPO-max) from a reward model or rule rewards
(`lmforge.align.ppo_trainer.train_ppo`).

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
import json
from pathlib import Path
from typing import Any

import torch

from lmforge.commands.common import add_peft_arguments, peft_settings, run_config, subparser
from lmforge.models.hf import checkpoint_dir, load_model
from lmforge.peft.settings import apply_peft
from lmforge.tokenizer import load_tokenizer
from lmforge.train.run import print_summary, start_run

EXAMPLES = (
    "  lmforge ppo --config recipes/ppo-tiny.yaml --model runs/sft/model\n"
    "  lmforge ppo --config recipes/ppo-tiny.yaml --model runs/sft/model "
    "--reward-model runs/rm/model\n"
    "  lmforge ppo --config recipes/ppo-tiny.yaml --model ckpt/ --peft lora ppo.kl_coef=0.02\n\n"
    "Rewards: ppo.reward=task | format | r1 (rule rewards on ppo.task prompts) or a reward model\n"
    "(--reward-model). PPO-max: ppo.reward_norm, ppo.reward_clip, ppo.whiten_advantages,\n"
    "ppo.clip_eps, ppo.value_clip_eps, ppo.entropy_coef, ppo.kl_in_loss, ppo.ptx_coef."
)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "ppo",
        "RLHF with PPO (InstructGPT / PPO-max): a reward model or rule rewards",
        EXAMPLES,
    )
    p.add_argument("--config", required=True, metavar="FILE", help="YAML recipe")
    p.add_argument("--model", metavar="DIR", help="HF policy checkpoint (model.init_from)")
    p.add_argument("--reward-model", metavar="DIR", help="lmforge rm output (ppo.reward_model)")
    p.add_argument("--out", metavar="DIR", help="run folder (out_dir)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. ppo.kl_coef=0.02")
    add_peft_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.align.ppo_config import PPOConfig
    from lmforge.align.ppo_trainer import train_ppo

    extra = []
    if args.reward_model:
        extra += [f"ppo.reward_model={json.dumps(args.reward_model)}", "ppo.reward=model"]
    config = run_config(args, PPOConfig, extra)
    if not config.model.init_from:
        raise ValueError("ppo needs a policy: --model DIR (or model.init_from in the config)")
    if config.ppo.reward == "model" and not config.ppo.reward_model:
        raise ValueError("ppo.reward=model needs --reward-model DIR (or ppo.reward_model)")
    dist, console = start_run(config)
    if dist.enabled:
        raise ValueError("lmforge ppo runs in one process (rollouts are not sharded yet)")
    model_dir = checkpoint_dir(config.model.init_from)
    tokenizer = load_tokenizer(config.data.tokenizer or model_dir)
    policy = load_model(model_dir, dtype=torch.float32)
    apply_peft(policy, peft_settings(args), str(model_dir))
    summary = train_ppo(config, policy, tokenizer, run_dir=Path(config.out_dir), dist=dist,
                        console=console)  # fmt: skip
    print_summary(summary, console)
    console.print(f"critic     {summary['critic_dir']}", highlight=False)
    return 0
