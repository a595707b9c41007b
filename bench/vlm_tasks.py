"""A tiny vision-language model trained from scratch (vision encoder + language model) on
synthetic visual questions — colour, shape and count of procedurally drawn shapes — and
its exact-match accuracy on held-out images, within a CPU-time budget.

The recipe is ``lmforge/recipes/vlm-tiny.yaml`` (a Qwen2-VL-shaped model: 2-block ViT on
4-px patches of 32×32 images, 2×2 merger, 2-layer Qwen2 body with M-RoPE; ≈0.4M parameters)
through ``lmforge.train.vlm_sft.train_vlm_sft``, i.e. the one Trainer. CPU minutes are the
process's CPU time (all threads), so the figure does not depend on how busy the machine is.

    python bench/vlm_tasks.py [--steps 4000] [--out runs/bench-vlm] [overrides …]

Last line: ``RESULT vlm_tasks heldout_acc=<a> minutes=<m>`` (target: a ≥ 0.90 with m ≤ 20).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lmforge.train.config import load_config
from lmforge.train.vlm_sft import VLMRunConfig, train_vlm_sft

RECIPE = Path(__file__).resolve().parents[1] / "lmforge" / "recipes" / "vlm-tiny.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=0, help="0: the recipe's train.max_steps")
    ap.add_argument("--out", default="runs/bench-vlm")
    ap.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = [f"train.max_steps={args.steps}"] if args.steps else []
    overrides = [f"out_dir={args.out}", *steps, "train.resume=false", "log.progress=false",
                 *args.overrides]  # fmt: skip
    config = load_config(RECIPE, overrides, VLMRunConfig)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = train_vlm_sft(config)
    minutes = (time.process_time() - cpu0) / 60
    wall = (time.perf_counter() - wall0) / 60
    acc = summary["heldout_accuracy"]
    per_task = " ".join(f"{k}={v:.3f}" for k, v in acc.items() if k != "all")
    print(f"held-out accuracy per task: {per_task}; CPU {minutes:.1f} min, wall {wall:.1f} min")
    print(f"RESULT vlm_tasks heldout_acc={acc['all']:.3f} minutes={minutes:.1f}")


if __name__ == "__main__":
    main()
