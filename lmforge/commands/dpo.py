"""`lmforge dpo`: preference optimisation (DPO, IPO, conservative DPO, SimPO, ORPO) of an HF
model (`lmforge.align.dpo_trainer.train_dpo`).

    lmforge dpo --config recipes/dpo-tiny.yaml --model runs/sft-tiny/model --data prefs.jsonl
    lmforge dpo --config recipes/dpo-tiny.yaml --model ckpt/ --peft lora dpo.loss_type=ipo
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.align.dpo_trainer import DPOConfig, train_dpo
from lmforge.commands.common import (
    add_model_and_data_arguments,
    add_peft_arguments,
    add_recipe_arguments,
    peft_settings,
    run_config,
    subparser,
)
from lmforge.train.config import RunConfig

DATA_HELP = (
    "Data: JSONL / Parquet / saved HF datasets with 'prompt' + 'chosen' + 'rejected' (strings\n"
    "or message lists) or 'chosen' + 'rejected' conversations; without --data, synthetic\n"
    "preferences (data.synthetic_docs pairs). Overrides are section.key=value."
)
EXAMPLES = (
    "  lmforge dpo --config recipes/dpo-tiny.yaml --model runs/sft-tiny/model\n"
    "  lmforge dpo --config recipes/dpo-tiny.yaml --model ckpt/ --data prefs.jsonl "
    "dpo.beta=0.05\n"
    "  lmforge dpo --config recipes/dpo-tiny.yaml --model ckpt/ dpo.loss_type=simpo dpo.beta=2 "
    "dpo.gamma=0.5\n"
    "  lmforge dpo --config recipes/dpo-tiny.yaml --model ckpt/ --peft lora   # reference = "
    "base\n\n" + DATA_HELP
)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "dpo",
        "preference optimisation (DPO, IPO, conservative DPO, SimPO, ORPO) of an HF model",
        EXAMPLES,
    )
    add_recipe_arguments(p)
    add_model_and_data_arguments(p, "preference data (data.paths)")
    add_peft_arguments(p)
    p.set_defaults(run=run)


def preference_config(args: argparse.Namespace, cls: type[RunConfig]) -> RunConfig:
    """The run config of ``dpo`` / ``rm``, which need a model to start from."""
    config = run_config(args, cls)
    if not config.model.init_from:
        raise ValueError(f"{args.command} needs a model: --model DIR (or model.init_from)")
    return config


def run(args: argparse.Namespace) -> int:
    train_dpo(preference_config(args, DPOConfig), peft=peft_settings(args))
    return 0
