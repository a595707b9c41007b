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
        "  lmforge scaling flops --layers 24 --d-model 2048 --seq-len 4096 --tokens 2e12\n"
        "  lmforge scaling sweep --out runs/scaling --budgets 1e9,2e9,4e9 --lrs 1e-2,2e-2\n\n"
        "plan: batch size (tokens), learning rate, model scale M (non-embedding FLOPs per\n"
        "token) and tokens D for a compute budget C = M·D, from B_opt = 0.2920·C^0.3271,\n"
        "η_opt = 0.3118·C^−0.1250, M_opt = 0.1715·C^0.5243, D_opt = 5.8316·C^0.4757\n"
        "(DeepSeek LLM, 2024) or from a fit file written by `lmforge scaling fit`.",
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="{plan,fit,flops,sweep}")
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
    sweep = subparser(verbs, "sweep", "train (batch × lr) grids and IsoFLOP profiles, then fit",
                      "  lmforge scaling sweep --out runs/scaling --budgets 1e9,2e9,4e9\n")  # fmt: skip
    sweep.add_argument("--out", required=True, metavar="DIR", help="sweep folder (resumable)")
    sweep.add_argument("--budgets", required=True, metavar="C,…", help="compute budgets (FLOPs)")
    sweep.add_argument("--batch-sizes", default="2,4,8", metavar="B,…", help="sequences (2,4,8)")
    sweep.add_argument("--lrs", default="1e-2,2e-2,4e-2", metavar="LR,…", help="peak lrs")
    sweep.add_argument("--shape", default="1x48", metavar="LxD",
                       help="n_layer x d_model of the (batch × lr) grid (1x48)")  # fmt: skip
    sweep.add_argument("--shapes", default="1x48,2x48,3x48,2x96", metavar="LxD,…",
                       help="IsoFLOP shapes, trained at the first batch size and lr")  # fmt: skip
    sweep.add_argument("--seq-len", type=int, default=32, help="sequence length (32)")
    sweep.add_argument("--docs", type=int, default=600, help="synthetic corpus documents (600)")
    sweep.set_defaults(run=run_sweep)


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


def parse_list(flag: str, text: str, kind: type) -> list:
    """``"1e9,2e9"`` → [1e9, 2e9]; errors name the flag."""
    try:
        values = [kind(float(v)) if kind is int else kind(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise CommandError(f"{flag} {text!r}: expected comma-separated numbers") from exc
    if not values:
        raise CommandError(f"{flag} {text!r}: empty")
    return values


def parse_shape(flag: str, text: str) -> tuple[int, int]:
    """``"2x48"`` → (2, 48)."""
    layers, sep, width = text.partition("x")
    if not sep or not layers.isdigit() or not width.isdigit():
        raise CommandError(f"{flag} {text!r}: expected n_layer x d_model, e.g. 2x48")
    return int(layers), int(width)


def run_sweep(args: argparse.Namespace) -> int:
    from lmforge.eval.scaling import fit_scaling_laws, save_fit
    from lmforge.eval.sweep import hyper_points, split_points, sweep_base_config
    from lmforge.eval.sweep import run_sweep as train_points

    budgets = parse_list("--budgets", args.budgets, float)
    batches = parse_list("--batch-sizes", args.batch_sizes, int)
    lrs = parse_list("--lrs", args.lrs, float)
    shape = parse_shape("--shape", args.shape)
    shapes = [parse_shape("--shapes", s) for s in args.shapes.split(",") if s.strip()]
    base = sweep_base_config(args.out, seq_len=args.seq_len, docs=args.docs)
    hyper = train_points(base, hyper_points(budgets, batches, lrs, *shape), args.out)
    split = train_points(base, split_points(budgets, shapes, batches[0], lrs[0]), args.out)
    print(f"{len(hyper)} + {len(split)} runs: {Path(args.out) / 'runs.jsonl'}")
    if len(budgets) >= 2:
        save_fit(Path(args.out) / "fit.json", fit_scaling_laws(hyper, split))
        print(f"fit: {Path(args.out) / 'fit.json'} (lmforge scaling plan --fit)")
    return 0
