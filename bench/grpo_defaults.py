"""Which ``grpo-tiny`` defaults leave a good model good: a small sweep of learning rate ×
rollout temperature from one strong starting point, held-out greedy accuracy after.

The starting point is a model that already solves the task (the demo's final model,
``runs/demo/model``: 3-digit additions in the R1 format, ≈ 98 % greedy on the held-out
split — run ``make demo`` once to get it, or pass ``--model``). Each setting runs
``--steps`` GRPO steps of the ``grpo-tiny`` recipe (8 prompts × 8 completions, β = 0, μ = 1,
constant lr, AdamW) on that task's train split and measures greedy accuracy on
``--eval`` held-out problems before and after. A good default must not lose accuracy.

    python bench/grpo_defaults.py [--model runs/demo/model] [--steps 6] [--eval 100]

Last line: ``RESULT grpo_defaults best_lr=<lr> best_T=<T> acc_before=<a> acc_after=<b>``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from lmforge.align.grpo_trainer import GRPOConfig, train_grpo
from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import load_config

RECIPE = Path(__file__).resolve().parent.parent / "lmforge" / "recipes" / "grpo-tiny.yaml"


def run_setting(model_dir: str, lr: float, temperature: float, args, out: Path) -> dict:
    over = {"optim.lr": lr, "grpo.temperature": temperature, "train.max_steps": args.steps,
            "train.eval_every": 0, "train.save_every": 0, "train.max_time_s": 0,
            "train.resume": False, "log.progress": False, "log.plot": False,
            "grpo.digits": 3, "grpo.ops": ["+"], "grpo.max_new_tokens": 48,
            "grpo.eval_prompts": args.eval, "train.cpu_threads": 1,
            "out_dir": str(out)}  # fmt: skip
    config = load_config(RECIPE, [f"{k}={json.dumps(v)}" for k, v in over.items()], GRPOConfig)
    model = load_model(model_dir, dtype=torch.float32)
    tok = load_tokenizer(model_dir)
    start = time.perf_counter()
    summary = train_grpo(config, model, tok, run_dir=out, console=Console(quiet=True))
    return {"lr": lr, "temperature": temperature, "steps": summary["step"],
            "before": summary["eval_before"]["accuracy"],
            "after": summary["eval_after"]["accuracy"],
            "format_after": summary["eval_after"]["format"],
            "seconds": time.perf_counter() - start}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/demo/model")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--eval", type=int, default=100)
    parser.add_argument("--lrs", default="1e-4,3e-5,1e-5")
    parser.add_argument("--temperatures", default="1.0,0.6")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in map(float, args.lrs.split(",")):
            for temperature in map(float, args.temperatures.split(",")):
                row = run_setting(
                    args.model, lr, temperature, args, Path(tmp) / f"{lr}-{temperature}"
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("| lr | temperature | steps | greedy acc before | after | format after | s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['lr']:g} | {r['temperature']} | {r['steps']} | {100 * r['before']:.0f} % | "
            f"{100 * r['after']:.0f} % | {100 * r['format_after']:.0f} % | {r['seconds']:.0f} |"
        )
    # the best setting: highest accuracy after; ties → the larger learning rate (learns faster)
    best = max(rows, key=lambda r: (round(r["after"], 6), r["lr"]))
    print(
        f"RESULT grpo_defaults best_lr={best['lr']:g} best_T={best['temperature']} "
        f"acc_before={100 * best['before']:.1f} acc_after={100 * best['after']:.1f}"
    )


if __name__ == "__main__":
    main()
