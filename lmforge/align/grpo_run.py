"""A GRPO run from a `GRPOConfig` alone (``lmforge grpo``, the R1 demo): load the
``model.init_from`` checkpoint and its tokenizer, add the adapter, run
`lmforge.align.grpo_trainer.train_grpo` into ``out_dir`` and print the summary.

    config = load_config("recipes/grpo-tiny.yaml", ['model.init_from="runs/sft/model"'],
                         GRPOConfig)
    summary = run_grpo(config)     # eval_before / eval_after: held-out accuracy

The run folder is the one of SFT (config.yaml, metrics.jsonl, training.png, checkpoints/,
model/) plus ``eval.jsonl`` (held-out accuracy over the run). Running the same config again
resumes from the latest checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.align.dpo_trainer import init_model_dir
from lmforge.align.grpo_trainer import GRPOConfig, train_grpo
from lmforge.models.hf import load_model
from lmforge.peft.settings import PeftSettings, apply_peft
from lmforge.tokenizer import load_tokenizer
from lmforge.train.distributed import DistInfo
from lmforge.train.run import start_run


def run_grpo(
    config: GRPOConfig,
    *,
    peft: PeftSettings | None = None,
    dist: DistInfo | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """GRPO on ``model.init_from`` (with ``peft``: the adapter only), in one process;
    returns `train_grpo`'s summary."""
    dist, console = start_run(config, dist, console)
    if dist.enabled:
        raise ValueError("lmforge grpo runs in one process (rollouts are not sharded yet)")
    model_dir = init_model_dir(config, "grpo")
    tokenizer = load_tokenizer(config.data.tokenizer or model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    apply_peft(model, peft, str(model_dir))
    summary = train_grpo(config, model, tokenizer, run_dir=Path(config.out_dir), dist=dist,
                         console=console)  # fmt: skip
    print_grpo_summary(summary, console)
    return summary


def print_grpo_summary(summary: dict[str, Any], console: Console) -> None:
    """Steps, held-out accuracy and format rate before → after, and where things are."""
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
