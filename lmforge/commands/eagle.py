"""`lmforge eagle train`: an EAGLE drafter layer for a checkpoint, trained on its own
features (`lmforge.train.drafter_objectives.train_eagle`); serve it with
``lmforge serve --model DIR --speculative eagle --drafter RUN/eagle``.

    lmforge eagle train --model runs/p/model --data corpus.jsonl --out runs/eagle
"""

from __future__ import annotations

from typing import Any

from lmforge.commands.medusa import add_drafter_parser

EXAMPLES = (
    "  lmforge eagle train --model runs/p/model --data corpus.jsonl --out runs/eagle\n"
    "  lmforge eagle train --model ckpt/ --data text/ eagle.cls_weight=0.1 train.max_steps=500\n\n"
    "The layer goes to OUT/eagle; serve with\n"
    "`lmforge serve --model DIR --speculative eagle --drafter OUT/eagle --tree-width 2`."
)


def add_parser(subparsers: Any) -> None:
    add_drafter_parser(subparsers, "eagle", "train an EAGLE drafter layer for a checkpoint",
                       EXAMPLES)  # fmt: skip
