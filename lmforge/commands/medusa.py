"""`lmforge medusa train`: Medusa heads for a checkpoint, trained on text through the one
Trainer (`lmforge.train.drafter_objectives.train_medusa`); serve them with
``lmforge serve --model DIR --speculative medusa --drafter RUN/medusa``.

    lmforge medusa train --model runs/p/model --data corpus.jsonl --out runs/medusa
    lmforge medusa train --model ckpt/ --data text/ medusa.mode=medusa2 medusa.num_heads=4
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.commands.common import (
    CommandError,
    add_model_and_data_arguments,
    add_recipe_arguments,
    run_config,
    subparser,
)
from lmforge.train.drafter_objectives import DrafterConfig, train_eagle, train_medusa

EXAMPLES = (
    "  lmforge medusa train --model runs/p/model --data corpus.jsonl --out runs/medusa\n"
    "  lmforge medusa train --model ckpt/ --data text/ medusa.num_heads=4 train.max_steps=500\n"
    "  lmforge medusa train --model ckpt/ --data text/ medusa.mode=medusa2 "
    "medusa.self_distill=true\n\n"
    "Medusa-1 (default) trains the heads on a frozen model; medusa2 trains jointly (the\n"
    "fine-tuned model is written to OUT/model). The heads go to OUT/medusa; serve with\n"
    "`lmforge serve --model DIR --speculative medusa --drafter OUT/medusa`."
)


def add_parser(subparsers: Any) -> None:
    add_drafter_parser(subparsers, "medusa", "train Medusa decoding heads for a checkpoint",
                       EXAMPLES)  # fmt: skip


def add_drafter_parser(subparsers: Any, name: str, help: str, examples: str) -> None:
    """``lmforge NAME train --model DIR --data FILE… [--config] [--out] [KEY=VALUE…]``."""
    group = subparsers.add_parser(name, help=help)
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = subparser(actions, "train", help, examples)
    add_recipe_arguments(p, name)
    add_model_and_data_arguments(p, "training text: files or folders (data.paths)")
    p.set_defaults(run=run, command=f"{name} train", drafter=name)


def run(args: argparse.Namespace) -> int:
    config = run_config(args, DrafterConfig)
    if not config.model.init_from:
        raise CommandError("name the model whose drafter to train: --model DIR")
    (train_medusa if args.drafter == "medusa" else train_eagle)(config)
    return 0
