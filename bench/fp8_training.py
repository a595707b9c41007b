"""FP8 training vs fp32: the relative validation-loss gap (DeepSeek-V3 §3.3, Fig. 10).

The same model (same initial weights), the same data in the same order and the same recipe
are trained three times through the one `Trainer`:

* ``fp32``     — the baseline;
* ``fp8``      — ``train.precision=fp8``: every linear layer's Fprop / Dgrad / Wgrad GEMM in
  E4M3 with 1×128 activation tiles and 128×128 weight blocks, fp32 promotion every 128
  elements of K, bf16 AdamW moments, fp32 master weights (`lmforge.nn.fp8`; simulated on
  CPU);
* ``per_tensor`` — the same, but one scale per operand (the contrast).

The model is small (hidden 128, intermediate 384: the down projection's K holds three 128-tiles,
the others one per token) to keep the three runs within a few CPU-minutes.
The relative gap is ``(val_loss_fp8 − val_loss_fp32) / val_loss_fp32`` at the end (the paper
reports < 0.25 % at its scale). Each run writes its run folder (metrics.jsonl,
training.png) under ``--out``.

    nice -n 10 python bench/fp8_training.py [--steps 120] [--out runs/bench-fp8]

Last line: ``RESULT fp8 rel_loss_gap=<x> per_tensor_rel_loss_gap=<y>``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from rich.console import Console

from lmforge.data.loader import PretrainLoader
from lmforge.nn.fp8 import Fp8Recipe, convert_to_fp8
from lmforge.train.config import load_config
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer
from lmforge.train.pretrain import (
    pretrain_model,
    pretrain_tokenizer,
    synthetic_corpus_files,
    token_file,
)

MODES = ("fp32", "fp8", "per_tensor")


def make_config(out: Path, steps: int, mode: str):
    overrides = [
        f"out_dir={out / mode}",
        "model.preset=tiny",
        "model.overrides={hidden_size: 128, intermediate_size: 384, num_hidden_layers: 2, "
        "num_attention_heads: 4, num_key_value_heads: 4, tie_word_embeddings: false}",
        "data.vocab_size=512",
        "data.synthetic_docs=3000",
        "data.val_docs=100",
        "data.seq_len=64",
        "train.batch_size=8",
        f"train.max_steps={steps}",
        f"train.eval_every={max(steps // 6, 1)}",
        "train.eval_batches=8",
        "train.save_every=0",
        "train.resume=false",
        "train.device=cpu",
        f"train.precision={'fp32' if mode == 'fp32' else 'fp8'}",
        "optim.lr=2e-3",
        "optim.warmup_steps=20",
        "log.progress=false",
    ]
    return load_config(None, overrides)


def run(mode: str, out: Path, steps: int, data) -> dict:
    config = make_config(out, steps, mode)
    tokenizer, train_tokens, val_tokens = data
    torch.manual_seed(0)
    model = pretrain_model(config, tokenizer)
    if mode == "per_tensor":  # pre-converted: the Trainer's fp8 switch leaves these alone
        convert_to_fp8(model, Fp8Recipe(granularity="tensor"))
    t = config.train
    loader = PretrainLoader(train_tokens.path, config.data.seq_len, t.batch_size, seed=0)
    val = PretrainLoader(val_tokens.path, config.data.seq_len, t.batch_size, seed=0)
    shutil.rmtree(config.out_dir, ignore_errors=True)
    trainer = Trainer(model, loader, config, val_data=val, tokenizer=tokenizer,
                      run_dir=config.out_dir, console=Console(quiet=True))  # fmt: skip
    start = time.perf_counter()
    summary = trainer.fit()
    summary["seconds"] = time.perf_counter() - start
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", default="runs/bench-fp8")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    config = make_config(out, args.steps, "data")
    dist = DistInfo()
    console = Console(quiet=True)
    train_paths, val_paths = synthetic_corpus_files(config, out / "data", dist)
    tokenizer = pretrain_tokenizer(config, out / "data", train_paths, dist, console)
    data = (
        tokenizer,
        token_file(config, tokenizer, train_paths, out / "data" / "train", dist),
        token_file(config, tokenizer, val_paths, out / "data" / "val", dist),
    )
    results = {}
    for mode in MODES:
        s = run(mode, out, args.steps, data)
        results[mode] = s
        print(f"{mode:>10}: val_loss {s['val_loss']:.4f}  train_loss {s['loss']:.4f}  "
              f"{s['seconds']:.0f} s  ({out / mode})", flush=True)  # fmt: skip
    base = results["fp32"]["val_loss"]
    gap = (results["fp8"]["val_loss"] - base) / base
    gap_tensor = (results["per_tensor"]["val_loss"] - base) / base
    print(f"relative validation-loss gap vs fp32: fine-grained {gap:+.4%}, "
          f"per-tensor {gap_tensor:+.4%}")  # fmt: skip
    print(f"RESULT fp8 rel_loss_gap={gap:.5f} per_tensor_rel_loss_gap={gap_tensor:.5f}")


if __name__ == "__main__":
    main()
