"""`lmforge ppo`: RLHF with PPO (InstructGPT / PPO-max) from a reward model or rule rewards
(`lmforge.align.rl_run.run_ppo` → `lmforge.align.ppo_trainer.train_ppo`).

    lmforge ppo --config recipes/ppo-tiny.yaml --model runs/sft/model
    lmforge ppo --config recipes/ppo-tiny.yaml --model runs/sft/model --reward-model runs/rm/model
    lmforge ppo --config recipes/ppo-tiny.yaml --model ckpt/ --peft lora ppo.kl_coef=0.02
    lmforge ppo --config recipes/ppo-tiny.yaml --model ckpt/ --data tasks.jsonl \
        --reward myrewards:passes_tests
    torchrun --nproc_per_node 2 -m lmforge ppo --config recipes/ppo-tiny.yaml --model ckpt/

Prompts are the synthetic task's (``ppo.task``: arithmetic / countdown, chat-formatted) or
the user's records (``--data``: ``ppo.task=prompts``); the reward is the task's verifier
(``ppo.reward``: task, format, r1), a scalar reward model trained by ``lmforge rm``
(``--reward-model``), or the user's functions (``--reward MODULE:FUNCTION[:WEIGHT]``,
several; `lmforge.align.custom_rewards`; plus the reward model's score when both are given). The run folder is the
one of ``lmforge sft`` (config.yaml, metrics.jsonl, training.png, checkpoints/ — which hold
policy and critic, so running the command again resumes exactly) plus ``model/`` (the policy;
the adapter with ``--peft``) and ``critic/`` (the value model, an HF
``…ForSequenceClassification`` folder).
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.align.ppo_config import PPOConfig
from lmforge.align.rl_run import run_ppo
from lmforge.commands.common import (
    add_model_and_data_arguments,
    add_peft_arguments,
    add_recipe_arguments,
    peft_settings,
    run_config,
    subparser,
)
from lmforge.commands.grpo import add_reward_arguments, reward_overrides

EXAMPLES = (
    "  lmforge ppo --config recipes/ppo-tiny.yaml --model runs/sft/model\n"
    "  lmforge ppo --config recipes/ppo-tiny.yaml --model runs/sft/model "
    "--reward-model runs/rm/model\n"
    "  lmforge ppo --config recipes/ppo-tiny.yaml --model ckpt/ --peft lora ppo.kl_coef=0.02\n"
    "  lmforge ppo --config recipes/ppo-tiny.yaml --model ckpt/ --data tasks.jsonl "
    "--reward myrewards:passes_tests\n"
    "  torchrun --nproc_per_node 2 -m lmforge ppo --config recipes/ppo-tiny.yaml --model ckpt/"
    "\n\n"
    "Prompts: ppo.task=arithmetic | countdown, or --data FILE… (records with 'prompt' or\n"
    "'messages' and any fields your rewards read). Rewards: ppo.reward=task | format | r1\n"
    "(rule rewards), a reward model (--reward-model), or --reward MODULE:FUNCTION[:WEIGHT]\n"
    "(several add up; called as f(prompt=…, completion=…, **record fields) -> float).\n"
    "PPO-max: ppo.reward_norm, ppo.reward_clip, ppo.whiten_advantages,\n"
    "ppo.clip_eps, ppo.value_clip_eps, ppo.entropy_coef, ppo.kl_in_loss, ppo.ptx_coef."
)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "ppo",
        "RLHF with PPO (InstructGPT / PPO-max): a reward model or rule rewards",
        EXAMPLES,
    )
    add_recipe_arguments(p)
    add_model_and_data_arguments(p, "prompt records (data.paths; sets ppo.task=prompts)")
    add_reward_arguments(p, "ppo")
    add_peft_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    extra = reward_overrides(args, "ppo")
    if args.reward_model and not args.reward:
        extra.append("ppo.reward=model")
    if args.data:
        extra.append("ppo.task=prompts")
    config = run_config(args, PPOConfig, extra)
    if not config.model.init_from:
        raise ValueError("ppo needs a policy: --model DIR (or model.init_from in the config)")
    run_ppo(config, peft=peft_settings(args))
    return 0
