"""`lmforge scaling`: DeepSeek LLM's scaling laws (`lmforge.eval.scaling`).

    lmforge scaling plan --compute 1e21                 # the paper's coefficients
    lmforge scaling plan --compute 1e18 --fit fit.json  # a fitted file
    lmforge scaling fit runs.jsonl --out fit.json       # fit the laws to sweep results
    lmforge scaling flops --layers 24 --d-model 2048 --seq-len 4096
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lmforge.commands.common import CommandError, subparser


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "scaling",
        "DeepSeek LLM scaling laws: compute plans, fits to sweep results, FLOPs per token",
        "  lmforge scaling plan --compute 1e21\n"
        "  lmforge scaling plan --compute 1e18 --fit runs/scaling/fit.json --json\n"
        "  lmforge scaling fit runs/scaling/runs.jsonl --out runs/scaling/fit.json\n"
        "  lmforge scaling flops --layers 24 --d-model 2048 --seq-len 4096 --tokens 2e12\n\n"
        "plan: batch size (tokens), learning rate, model scale M (non-embedding FLOPs per\n"
        "token) and tokens D for a compute budget C = M·D, from B_opt = 0.2920·C^0.3271,\n"
        "η_opt = 0.3118·C^−0.1250, M_opt = 0.1715·C^0.5243, D_opt = 5.8316·C^0.4757\n"
        "(DeepSeek LLM, 2024) or from a fit file written by `lmforge scaling fit`.",
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="{plan,fit,flops}")
    plan = subparser(verbs, "plan", "recommended batch, lr, model scale and tokens for a budget",
                     "  lmforge scaling plan --compute 1e21\n")  # fmt: skip
    plan.add_argument("--compute", type=float, required=True, metavar="FLOPS", help="budget C")
    plan.add_argument("--fit", metavar="FILE", help="fit JSON (default: the paper's laws)")
    plan.add_argument("--seq-len", type=int, default=4096, metavar="N",
                      help="sequence length for the batch in sequences (default 4096)")  # fmt: skip
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(run=run_plan)
    fit = subparser(verbs, "fit", "fit the four power laws to sweep results (JSONL)",
                    "  lmforge scaling fit runs/scaling/runs.jsonl --out fit.json\n")  # fmt: skip
    fit.add_argument("runs", help="JSONL: compute, loss and batch/lr and/or model_scale")
    fit.add_argument("--tolerance", type=float, default=0.0025,
                     help="near-optimal: loss within this fraction of the best (0.0025)")  # fmt: skip
    fit.add_argument("--out", metavar="FILE", help="write the fit here (JSON)")
    fit.set_defaults(run=run_fit)
    flops = subparser(verbs, "flops", "non-embedding FLOPs per token M and the budget C = M·D",
                      "  lmforge scaling flops --layers 24 --d-model 2048 --seq-len 4096\n")  # fmt: skip
    flops.add_argument("--layers", type=int, required=True, help="n_layer")
    flops.add_argument("--d-model", type=int, required=True, help="d_model")
    flops.add_argument("--seq-len", type=int, required=True, help="l_seq")
    flops.add_argument("--tokens", type=float, help="training tokens D (prints C = M·D)")
    flops.set_defaults(run=run_flops)


def run_plan(args: argparse.Namespace) -> int:
    from lmforge.eval.scaling import PAPER_FIT, load_fit, plan

    fit = load_fit(args.fit) if args.fit else PAPER_FIT
    if args.compute <= 0:
        raise CommandError(f"--compute {args.compute}: must be > 0 FLOPs")
    result = plan(args.compute, fit)
    if "batch_tokens" in result:
        result["batch_sequences"] = result["batch_tokens"] / args.seq_len
    if args.json:
        print(json.dumps({"compute": args.compute, **result}, indent=2))
        return 0
    source = args.fit or "DeepSeek LLM (2024) coefficients"
    print(f"compute budget C = {args.compute:.3g} FLOPs ({source})")
    labels = {"batch_tokens": "batch size (tokens)", "batch_sequences":
              f"batch size (sequences of {args.seq_len})", "lr": "learning rate",
              "model_scale": "model scale M (FLOPs/token)", "tokens": "training tokens D"}  # fmt: skip
    for key, label in labels.items():
        if key in result:
            print(f"  {label:<34} {result[key]:.4g}")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    from lmforge.eval.scaling import fit_scaling_laws, save_fit

    path = Path(args.runs)
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    runs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CommandError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from exc
    hyper = [r for r in runs if "batch" in r and "lr" in r]
    split = [r for r in runs if "model_scale" in r]
    fit = fit_scaling_laws(hyper, split, args.tolerance)
    for name in ("batch", "lr", "model_scale", "tokens"):
        law = getattr(fit, name)
        text = "not fitted (runs at fewer than 2 budgets)" if law is None else (
            f"{law.coefficient:.4g} · C^{law.exponent:.4f}")  # fmt: skip
        print(f"{name:<12} {text}")
    if args.out:
        save_fit(args.out, fit)
        print(f"fit: {args.out}")
    return 0


def run_flops(args: argparse.Namespace) -> int:
    from lmforge.eval.flops import compute_budget, deepseek_flops_per_token

    m = deepseek_flops_per_token(args.layers, args.d_model, args.seq_len)
    print(f"M = 72·{args.layers}·{args.d_model}² + 6·{args.layers}·{args.d_model}·"
          f"{args.seq_len} = {m:.4g} FLOPs per token")  # fmt: skip
    if args.tokens:
        print(f"C = M·D = {compute_budget(m, args.tokens):.4g} FLOPs for {args.tokens:.3g} tokens")
    return 0
