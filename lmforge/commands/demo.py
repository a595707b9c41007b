"""`lmforge demo`: the R1-style pipeline on CPU — tokenizer, pretrain, SFT, GRPO — with
held-out accuracy per stage (`lmforge.align.r1_pipeline.run_demo`).

    lmforge demo [--out runs/demo] [--seed 0] [--fast]
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.commands.common import subparser


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "demo",
        "R1-style pipeline on CPU: tokenizer, pretrain, SFT, GRPO; held-out accuracy per stage",
        "  lmforge demo\n  lmforge demo --out runs/demo2 --seed 1\n  lmforge demo --fast",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="default: runs/demo")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--fast", action="store_true", help="seconds-long smoke run (tiny settings)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.align.r1_pipeline import run_demo

    run_demo(args.out, seed=args.seed, fast=args.fast)
    return 0
