"""`lmforge rm`: a Bradley-Terry reward model (scalar head on an HF model) trained on
preference pairs (`lmforge.align.rm_trainer.train_rm`); it loads in ``transformers`` as
``LlamaForSequenceClassification`` (``num_labels=1``).

    lmforge rm --config recipes/rm-tiny.yaml --model runs/sft-tiny/model --data prefs.jsonl
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.align.rm_trainer import RMConfig, train_rm
from lmforge.commands.common import add_model_and_data_arguments, add_recipe_arguments, subparser
from lmforge.commands.dpo import DATA_HELP, preference_config

EXAMPLES = (
    "  lmforge rm --config recipes/rm-tiny.yaml --model runs/sft-tiny/model\n"
    "  lmforge rm --config recipes/rm-tiny.yaml --model ckpt/ --data prefs.jsonl rm.margin=0.5"
    "\n\n" + DATA_HELP
)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "rm",
        "train a Bradley-Terry reward model (scalar head on an HF model) on preference pairs",
        EXAMPLES,
    )
    add_recipe_arguments(p)
    add_model_and_data_arguments(p, "preference data (data.paths)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    train_rm(preference_config(args, RMConfig))
    return 0
