"""`lmforge demo`: the R1-style pipeline on CPU — tokenizer, pretrain, SFT, GRPO — with
held-out accuracy per stage (`lmforge.align.r1_pipeline.run_demo`); over several seeds with
their mean (`run_demo_seeds`); or DeepSeek-R1-Zero, GRPO from the base (`lmforge.align.r1_zero`).

    lmforge demo [--out runs/demo] [--seed 0 | --seeds 0,1,2 [--jobs 2]] [--fast] [--zero [--easy]]
                 [--cold-start-acc 0.5]
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.commands.common import CommandError, subparser


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "demo",
        "R1-style pipeline on CPU: tokenizer, pretrain, SFT, GRPO; held-out accuracy per stage",
        "  lmforge demo\n  lmforge demo --seeds 0,1,2 --jobs 2 --out runs/demo-seeds\n"
        "  lmforge demo --zero\n  lmforge demo --zero --easy --out runs/demo-zero-easy\n"
        "  lmforge demo --fast",
    )
    p.add_argument("--out", default=None, metavar="DIR",
                   help="default: runs/demo (--zero: runs/demo-zero)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--seeds", default=None, metavar="S,S,…",
                   help="run once per seed (into DIR/seed-<s>) and report each and the mean")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1,
                   help="with --seeds: seeds run at once in worker processes (default: 1)")  # fmt: skip
    p.add_argument("--zero", action="store_true",
                   help="DeepSeek-R1-Zero: GRPO from the pretrained base, no SFT")  # fmt: skip
    p.add_argument("--easy", action="store_true",
                   help="with --zero: a base pretrained 350 steps with R1-Zero-style "
                        "transcripts in its text, rollouts at T 0.6, lr 3e-5")  # fmt: skip
    p.add_argument("--cold-start-acc", type=float, default=None, metavar="A",
                   help="cold start: SFT in chunks until greedy accuracy on train-split "
                        "problems reaches A (default 0.5); 0: a fixed step count instead")  # fmt: skip
    p.add_argument("--fast", action="store_true", help="seconds-long smoke run (tiny settings)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.align import r1_pipeline

    if args.easy and not args.zero:
        raise CommandError("--easy goes with --zero")
    if args.zero:
        if args.seeds is not None:
            raise CommandError("--zero runs one seed (--seed), not --seeds")
        if args.cold_start_acc is not None:
            raise CommandError("--zero has no SFT cold start to gate (--cold-start-acc)")
        from lmforge.align.r1_zero import run_zero

        run_zero(args.out or "runs/demo-zero", seed=args.seed, fast=args.fast, easy=args.easy)
        return 0
    out = args.out or "runs/demo"
    gate: dict[str, float] = {}
    if args.cold_start_acc is not None:
        if not 0 <= args.cold_start_acc <= 1:
            raise CommandError(f"--cold-start-acc {args.cold_start_acc:g} must be in [0, 1]")
        gate["cold_start_acc"] = args.cold_start_acc
    if args.seeds is None:
        r1_pipeline.run_demo(out, seed=args.seed, fast=args.fast, **gate)
        return 0
    seeds = r1_pipeline.parse_seeds(args.seeds)
    r1_pipeline.run_demo_seeds(out, seeds, fast=args.fast, jobs=args.jobs, **gate)
    return 0
