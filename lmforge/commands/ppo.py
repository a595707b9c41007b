"""`lmforge ppo`: RLHF with PPO (InstructGPT / PPO-max) from a reward model or rule rewards
(`lmforge.align.rl_run.run_ppo` → `lmforge.align.ppo_trainer.train_ppo`).

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
from typing import Any

from lmforge.align.ppo_config import PPOConfig
from lmforge.align.rl_run import run_ppo
from lmforge.commands.common import add_peft_arguments, peft_settings, run_config, subparser

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
    extra = []
    if args.reward_model:
        extra += [f"ppo.reward_model={json.dumps(args.reward_model)}", "ppo.reward=model"]
    config = run_config(args, PPOConfig, extra)
    if not config.model.init_from:
        raise ValueError("ppo needs a policy: --model DIR (or model.init_from in the config)")
    run_ppo(config, peft=peft_settings(args))
    return 0
