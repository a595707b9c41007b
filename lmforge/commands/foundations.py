"""`lmforge foundations cpc|margin|oadtr`: the representation and video foundations on
synthetic data — CPC (`lmforge.representation.runs.run_cpc`), the margin-softmax losses on
identity verification (`run_margin`), OadTR vs a GRU (`lmforge.video.runs.run_oadtr`).
Every model trains through the one Trainer: progress bar, ``metrics.jsonl``, atomic
checkpoints under ``--out`` (every ``--save-every`` steps); the same command run again resumes
an interrupted run from its last checkpoint (a finished one only re-evaluates).

    lmforge foundations cpc --context transformer --out runs/cpc
    lmforge foundations margin --loss arcface cosface softmax --out runs/margin
    lmforge foundations oadtr --out runs/oadtr
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmforge.commands.common import CommandError, subparser

LOSSES = ("softmax", "normface", "lsoftmax", "sphereface", "cosface", "arcface")


def add_parser(subparsers: Any) -> None:
    group = subparsers.add_parser("foundations", help="CPC, margin-softmax losses, OadTR")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = subparser(actions, "cpc", "contrastive predictive coding on synthetic speaker signals",
                  "  lmforge foundations cpc --out runs/cpc\n"
                  "  lmforge foundations cpc --context transformer --steps 100 --out runs/cpc-tf")  # fmt: skip
    c.add_argument("--context", choices=("gru", "transformer"), default="gru")
    m = subparser(actions, "margin", "margin-softmax losses on held-out identity verification",
                  "  lmforge foundations margin --out runs/margin\n"
                  "  lmforge foundations margin --loss arcface softmax --steps 200 --out runs/m")  # fmt: skip
    m.add_argument("--loss", nargs="+", choices=LOSSES, default=list(LOSSES))
    o = subparser(actions, "oadtr", "online action detection: OadTR vs a GRU, per-frame mAP",
                  "  lmforge foundations oadtr --out runs/oadtr\n"
                  "  lmforge foundations oadtr --steps 100 --out runs/oadtr-short")  # fmt: skip
    for p, steps, name in ((c, 150, "cpc"), (m, 300, "margin"), (o, 200, "oadtr")):
        p.add_argument("--steps", type=int, default=steps, help=f"default: {steps}")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--save-every", type=int, default=50, metavar="N",
                       help="checkpoint every N steps (and at the end); default: 50")  # fmt: skip
        p.add_argument("--out", default=f"runs/{name}", metavar="DIR", help=f"default: runs/{name}")
        p.set_defaults(run=run, command=f"foundations {name}")


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise CommandError("--steps must be ≥ 1")
    if args.save_every < 0:
        raise CommandError("--save-every must be ≥ 0 (0: only at the end)")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread avoids thread-pool overhead
    try:
        report = run_action(args)
    finally:
        torch.set_num_threads(threads)
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}/report.json, metrics.jsonl, curves.png, checkpoints/")
    return 0


def run_action(args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "cpc":
        from lmforge.representation.runs import run_cpc

        return run_cpc(
            args.out,
            context=args.context,
            steps=args.steps,
            seed=args.seed,
            save_every=args.save_every,
        )
    if args.action == "margin":
        from lmforge.representation.runs import run_margin

        return run_margin(
            args.out,
            losses=tuple(args.loss),
            steps=args.steps,
            seed=args.seed,
            save_every=args.save_every,
        )
    from lmforge.video.runs import run_oadtr

    return run_oadtr(args.out, steps=args.steps, seed=args.seed, save_every=args.save_every)
