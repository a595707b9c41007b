"""`lmforge pretrain`: a YAML recipe + ``key=value`` overrides → a run folder
(`lmforge.train.pretrain.train_pretrain`).

    lmforge pretrain --config recipes/pretrain-tiny.yaml train.max_steps=500
    lmforge pretrain --data corpus/ extra.txt --out runs/p train.max_steps=500
    torchrun --nproc_per_node 8 -m lmforge pretrain --config ...      # DDP / FSDP2
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.commands.common import (
    add_model_and_data_arguments,
    add_recipe_arguments,
    run_config,
    subparser,
)
from lmforge.train.pretrain import train_pretrain

EXAMPLES = (
    "  lmforge pretrain --config recipes/pretrain-tiny.yaml\n"
    "  lmforge pretrain --config recipes/pretrain-tiny.yaml --out runs/p2 optim.lr=1e-3 "
    "train.max_steps=500\n"
    "  lmforge pretrain --data corpus/ more.txt data.vocab_size=4096 --out runs/p3\n"
    "  lmforge pretrain --model runs/p3/model --data new.jsonl train.max_steps=200\n"
    "  lmforge pretrain train.max_steps=50 --out runs/p3 --print-config\n\n"
    "--data takes .txt / .jsonl / .json / .parquet files or folders of them (data.paths;\n"
    "default: a synthetic corpus); --model continues pretraining a checkpoint.\n"
    "Overrides are section.key=value (values in YAML syntax), anywhere on the line. Without\n"
    "--config the built-in recipes/pretrain-tiny.yaml is used. Running the same command again\n"
    "resumes from the run folder's latest checkpoint (use a new --out to start over)."
)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "pretrain",
        "pretrain a language model from a YAML recipe (synthetic corpus when no data is given)",
        EXAMPLES,
    )
    add_recipe_arguments(p)
    add_model_and_data_arguments(
        p, "training text: files or folders (data.paths)", "checkpoint to continue pretraining:"
        " an HF folder",
    )  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    train_pretrain(run_config(args))
    return 0
