"""`lmforge grpo`: GRPO (and its DAPO / Dr. GRPO / GSPO variants) on a verifiable task
(`lmforge.align.rl_run.run_grpo` → `lmforge.align.grpo_trainer.train_grpo`).

    lmforge grpo --config recipes/grpo-tiny.yaml --model runs/sft/model
    lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ --peft lora grpo.beta=0.04
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.align.grpo_trainer import GRPOConfig
from lmforge.align.rl_run import run_grpo
from lmforge.commands.common import add_peft_arguments, peft_settings, run_config, subparser

EXAMPLES = (
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model runs/sft/model\n"
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ grpo.aggregation=dapo "
    "grpo.eps_high=0.28 grpo.dynamic_sampling=true\n"
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ --peft lora grpo.beta=0.04\n\n"
    "Tasks: grpo.task=arithmetic | countdown (generated, with verifiers) | prompts (data.paths:\n"
    "JSONL records with 'prompt' and 'answer'). Rewards: accuracy + grpo.format_weight × R1 format."
)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "grpo",
        "GRPO reinforcement learning with rule rewards on a verifiable task (R1-style)",
        EXAMPLES,
    )
    p.add_argument("--config", required=True, metavar="FILE", help="YAML recipe")
    p.add_argument("--model", metavar="DIR", help="HF checkpoint folder (model.init_from)")
    p.add_argument("--out", metavar="DIR", help="run folder (out_dir)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. grpo.beta=0.04")
    add_peft_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = run_config(args, GRPOConfig)
    if not config.model.init_from:
        raise ValueError("grpo needs a model: --model DIR (or model.init_from in the config)")
    run_grpo(config, peft=peft_settings(args))
    return 0
