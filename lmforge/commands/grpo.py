"""`lmforge grpo`: GRPO (and its DAPO / Dr. GRPO / GSPO variants) on a verifiable task or the
user's own prompts and rewards (`lmforge.align.rl_run.run_grpo` →
`lmforge.align.grpo_trainer.train_grpo`).

    lmforge grpo --config recipes/grpo-tiny.yaml --model runs/sft/model
    lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ --data tasks.jsonl \\
        --reward myrewards:passes_tests --reward myrewards:brevity:0.1
    torchrun --nproc_per_node 2 -m lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmforge.align.grpo_trainer import GRPOConfig
from lmforge.align.rl_run import run_grpo
from lmforge.commands.common import (
    add_model_and_data_arguments,
    add_peft_arguments,
    add_recipe_arguments,
    peft_settings,
    run_config,
    subparser,
)

EXAMPLES = (
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model runs/sft/model\n"
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ grpo.aggregation=dapo "
    "grpo.eps_high=0.28 grpo.dynamic_sampling=true\n"
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ --peft lora grpo.beta=0.04\n"
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ --data tasks.jsonl "
    "--reward myrewards:passes_tests --reward myrewards:brevity:0.1\n"
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ --reward-model runs/rm/model\n"
    "  torchrun --nproc_per_node 2 -m lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/"
    "\n\n"
    "Tasks: grpo.task=arithmetic | countdown (generated, with verifiers), or --data FILE…\n"
    "(grpo.task=prompts): JSONL / JSON records with 'prompt' (text, or a list of chat messages\n"
    "rendered through the chat template) or 'messages', plus any fields your rewards read\n"
    "('answer' for the built-in reward). Held out: data.val_paths, else a seeded\n"
    "data.val_fraction of the records (at most grpo.eval_prompts).\n"
    "Rewards: the built-in r1 (accuracy + grpo.format_weight × R1 format) unless --reward\n"
    "MODULE:FUNCTION[:WEIGHT] names your own (several add up; 'r1', 'accuracy', 'format' name\n"
    "the built-ins); each is called as f(prompt=…, completion=…, **other record fields) and\n"
    "returns a float. --reward-model DIR adds an `lmforge rm` model's score\n"
    "(× grpo.reward_model_weight)."
)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "grpo",
        "GRPO reinforcement learning with rule rewards, your own reward functions or a reward model",
        EXAMPLES,
    )
    add_recipe_arguments(p)
    add_model_and_data_arguments(p, "prompt records (data.paths; sets grpo.task=prompts)")
    add_reward_arguments(p, "grpo")
    add_peft_arguments(p)
    p.set_defaults(run=run)


def add_reward_arguments(p: argparse.ArgumentParser, section: str) -> None:
    """``--reward MODULE:FUNCTION[:WEIGHT]`` (repeatable) and ``--reward-model DIR``."""
    p.add_argument("--reward", action="append", metavar="MODULE:FUNCTION[:WEIGHT]",
                   help=f"a reward function (repeat for several; {section}.rewards)")  # fmt: skip
    p.add_argument("--reward-model", metavar="DIR",
                   help=f"an `lmforge rm` output folder ({section}.reward_model)")  # fmt: skip


def reward_overrides(args: argparse.Namespace, section: str) -> list[str]:
    """``--reward`` / ``--reward-model`` as ``section.key=value`` overrides."""
    extra = []
    if args.reward:
        extra.append(f"{section}.rewards={json.dumps(args.reward)}")
    if args.reward_model:
        extra.append(f"{section}.reward_model={json.dumps(args.reward_model)}")
    return extra


def run(args: argparse.Namespace) -> int:
    extra = reward_overrides(args, "grpo")
    if args.data:
        extra.append("grpo.task=prompts")
    config = run_config(args, GRPOConfig, extra)
    if not config.model.init_from:
        raise ValueError("grpo needs a model: --model DIR (or model.init_from in the config)")
    run_grpo(config, peft=peft_settings(args))
    return 0
