"""`lmforge grpo`: GRPO (and its DAPO / Dr. GRPO / GSPO variants) on a verifiable task.

    lmforge grpo --config recipes/grpo-tiny.yaml --model runs/sft/model
    lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ grpo.aggregation=dapo \\
        grpo.eps_high=0.28 grpo.dynamic_sampling=true
    lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ --peft lora grpo.beta=0.04

The run folder is the one of `lmforge sft` (config.yaml, metrics.jsonl, training.png,
checkpoints/, model/) plus ``eval.jsonl`` (held-out accuracy over the run). Running the same
command again resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

_EXAMPLES = (
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model runs/sft/model\n"
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ grpo.aggregation=dapo "
    "grpo.eps_high=0.28 grpo.dynamic_sampling=true\n"
    "  lmforge grpo --config recipes/grpo-tiny.yaml --model ckpt/ --peft lora grpo.beta=0.04\n\n"
    "Tasks: grpo.task=arithmetic | countdown (generated, with verifiers) | prompts (data.paths:\n"
    "JSONL records with 'prompt' and 'answer'). Rewards: accuracy + grpo.format_weight × R1 format."
)


def add_grpo_commands(commands, subparser) -> None:
    """Register ``grpo`` (``subparser(commands, name, help, examples)``)."""
    p = subparser(
        commands,
        "grpo",
        "GRPO reinforcement learning with rule rewards on a verifiable task (R1-style)",
        _EXAMPLES,
    )
    p.add_argument("--config", required=True, metavar="FILE", help="YAML recipe")
    p.add_argument("--model", metavar="DIR", help="HF checkpoint folder (model.init_from)")
    p.add_argument("--out", metavar="DIR", help="run folder (out_dir)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. grpo.beta=0.04")
    from lmforge.peft.commands import add_peft_arguments

    add_peft_arguments(p)
    p.set_defaults(run=run_grpo)


def run_grpo(args: argparse.Namespace) -> int:
    from lmforge.align.grpo_trainer import GRPOConfig, train_grpo
    from lmforge.cli import checkpoint_dir
    from lmforge.models.hf import load_model
    from lmforge.peft.commands import apply_peft_from_args
    from lmforge.tokenizer import load_tokenizer
    from lmforge.train.commands import _config, _setup

    extra = [f"model.init_from={json.dumps(args.model)}"] if args.model else []
    config = _config(args, extra, GRPOConfig)
    if not config.model.init_from:
        raise ValueError("grpo needs a model: --model DIR (or model.init_from in the config)")
    info, console = _setup(config)
    if info.enabled:
        raise ValueError("lmforge grpo runs in one process (rollouts are not sharded yet)")
    model_dir = checkpoint_dir(config.model.init_from)
    tokenizer = load_tokenizer(config.data.tokenizer or model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    apply_peft_from_args(model, args, str(model_dir))
    summary = train_grpo(config, model, tokenizer, run_dir=Path(config.out_dir), dist=info,
                         console=console)  # fmt: skip
    before, after = summary["eval_before"], summary["eval_after"]
    console.rule("[bold]summary")
    console.print(
        f"steps {summary['step']} ({summary['stop_reason']}), "
        f"{summary['elapsed_s']:.0f} s\n"
        f"held-out accuracy {100 * before['accuracy']:.1f}% → {100 * after['accuracy']:.1f}%, "
        f"format {100 * before['format']:.1f}% → {100 * after['format']:.1f}%\n"
        f"model      {summary['model_dir']}\nmetrics    {summary.get('metrics')}",
        highlight=False,
    )
    return 0
