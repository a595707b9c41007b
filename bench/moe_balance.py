"""MoE load balancing: auxiliary-loss-free bias vs auxiliary loss vs nothing (DeepSeek-V3
§2.1.2 and Table 5's ablation; Wang et al. 2024, arXiv:2408.15664).

The same DeepSeekMoE model (same initial weights: MLA attention, 8 routed experts top-2 plus
one shared expert in every layer) is pretrained three times on the same data in the same
order, for the same steps and tokens, through the one `Trainer`:

* ``auxfree`` — the correction bias moves by γ·sign(mean load − load_i) after every step
  (``train.moe_bias_update_speed`` = γ), no balance loss;
* ``aux``     — the sequence-wise balance loss with weight α (``aux_loss_alpha``), bias fixed;
* ``none``    — neither.

Balance is measured as in Wang et al. (eq. 6): ``MaxVio = max_i load_i / mean_i load_i − 1``
per MoE layer on each validation batch (the routing of a training-mode forward without
gradients), averaged over the layers and over the ``--eval-batches`` validation batches; the
evaluation runs every ``--eval-every`` steps (``moe_balance.png``: MaxVio over steps) and the
figures reported are the last evaluation's. Validation loss is the Trainer's (the
next-token loss only; the balance loss is a training term).

γ and α: the paper uses γ = 0.001 over 14.3T tokens; this run is a few hundred steps, so
γ = 0.01 (``--gamma``); α = 0.01 (``--alpha``) is the top of the 1e-4 … 1e-2 range of the
auxiliary-loss baselines (Wang et al. Fig. 2), strong enough to balance in a short run.

    nice -n 10 python bench/moe_balance.py [--steps 500] [--out runs/bench-moe-balance]

Last line: ``RESULT moe_balance maxvio_auxfree=<x> maxvio_aux=<y> maxvio_none=<z>
loss_auxfree=<a> loss_aux=<b>`` (plus ``loss_none``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from rich.console import Console

from lmforge.data.loader import PretrainLoader
from lmforge.io import atomic_path, atomic_write_text
from lmforge.train.config import load_config
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer
from lmforge.train.moe_balance import update_correction_bias
from lmforge.train.pretrain import (
    pretrain_model,
    pretrain_tokenizer,
    synthetic_corpus_files,
    token_file,
)

METHODS = ("auxfree", "aux", "none")


def make_config(out: Path, args, method: str):
    gamma = args.gamma if method == "auxfree" else 0.0
    alpha = args.alpha if method == "aux" else 0.0
    overrides = [
        f"out_dir={out / method}",
        "model.preset=deepseek-tiny",
        "model.overrides={first_k_dense_replace: 0, n_group: 1, topk_group: 1, "
        f"aux_loss_alpha: {alpha}}}",
        "data.vocab_size=512",
        "data.synthetic_docs=3000",
        "data.val_docs=100",
        "data.seq_len=64",
        "train.batch_size=8",
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.eval_every}",
        f"train.eval_batches={args.eval_batches}",
        "train.save_every=0",
        "train.resume=false",
        "train.device=cpu",
        "train.precision=fp32",
        f"train.moe_bias_update_speed={gamma}",
        "optim.lr=3e-3",
        "optim.warmup_steps=20",
        "log.progress=false",
    ]
    return load_config(None, overrides)


@torch.no_grad()
def eval_maxvio(model, val_path: Path, seq_len: int, batch_size: int, batches: int) -> float:
    """Mean over validation batches and MoE layers of MaxVio of a training-mode forward
    (the loads are read and reset per batch; γ = 0 leaves the bias unchanged)."""
    update_correction_bias(model, 0.0)  # drop anything counted before
    loader = iter(PretrainLoader(val_path, seq_len, batch_size, seed=0))
    was_training = model.training
    model.train()
    values = []
    for _ in range(batches):
        batch = next(loader)
        model(input_ids=batch["input_ids"])
        layers = update_correction_bias(model, 0.0)
        values.append(sum(layers.values()) / len(layers))
    model.train(was_training)
    return sum(values) / len(values)


def run(method: str, out: Path, args, data) -> dict:
    config = make_config(out, args, method)
    tokenizer, train_tokens, val_tokens = data
    torch.manual_seed(0)
    model = pretrain_model(config, tokenizer)
    t, seq = config.train, config.data.seq_len
    loader = PretrainLoader(train_tokens.path, seq, t.batch_size, seed=0)
    val = PretrainLoader(val_tokens.path, seq, t.batch_size, seed=0)
    curve = []

    def measure(trainer, record):
        if trainer.step % args.eval_every == 0 or trainer.step == args.steps:
            value = eval_maxvio(trainer.raw_model, val_tokens.path, seq, t.batch_size,
                                args.eval_batches)  # fmt: skip
            curve.append((trainer.step, value))

    shutil.rmtree(config.out_dir, ignore_errors=True)
    trainer = Trainer(model, loader, config, val_data=val, tokenizer=tokenizer,
                      run_dir=config.out_dir, console=Console(quiet=True),
                      callbacks=[measure])  # fmt: skip
    start = time.perf_counter()
    summary = trainer.fit()
    summary.update(seconds=time.perf_counter() - start, curve=curve, maxvio=curve[-1][1])
    summary["train_maxvio"] = [
        (r["step"], r["moe_maxvio"])
        for r in map(json.loads, (Path(config.out_dir) / "metrics.jsonl").read_text().split("\n")[:-1])
        if "moe_maxvio" in r
    ]  # fmt: skip
    return summary


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_eval, ax_train) = plt.subplots(1, 2, figsize=(12, 4))
    for method, s in results.items():
        steps, values = zip(*s["curve"])
        ax_eval.plot(steps, values, "o-", label=method)
        steps, values = zip(*s["train_maxvio"])
        window = 10
        smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                  for i in range(len(values))]  # fmt: skip
        ax_train.plot(steps, smooth, label=method)
    ax_eval.set(xlabel="step", ylabel="MaxVio", title="MaxVio on validation batches")
    ax_train.set(xlabel="step", ylabel="MaxVio", title="MaxVio of each training batch (mean of 10)")
    for ax in (ax_eval, ax_train):
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--gamma", type=float, default=0.01)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--out", default="runs/bench-moe-balance")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    config = make_config(out, args, "data")
    dist, console = DistInfo(), Console(quiet=True)
    train_paths, val_paths = synthetic_corpus_files(config, out / "data", dist)
    tokenizer = pretrain_tokenizer(config, out / "data", train_paths, dist, console)
    data = (
        tokenizer,
        token_file(config, tokenizer, train_paths, out / "data" / "train", dist),
        token_file(config, tokenizer, val_paths, out / "data" / "val", dist),
    )
    results = {}
    for method in METHODS:
        s = results[method] = run(method, out, args, data)
        print(f"{method:>8}: val_loss {s['val_loss']:.4f}  MaxVio {s['maxvio']:.3f}  "
              f"{s['tokens']:,} tokens  {s['seconds']:.0f} s", flush=True)  # fmt: skip
    plot(results, out / "moe_balance.png")
    summary = {m: {k: results[m][k] for k in ("val_loss", "maxvio", "curve", "tokens")}
               for m in METHODS}  # fmt: skip
    atomic_write_text(out / "moe_balance.json", json.dumps(summary, indent=1))
    print(f"plot: {out / 'moe_balance.png'}")
    r = results
    print(
        f"RESULT moe_balance maxvio_auxfree={r['auxfree']['maxvio']:.4f} "
        f"maxvio_aux={r['aux']['maxvio']:.4f} maxvio_none={r['none']['maxvio']:.4f} "
        f"loss_auxfree={r['auxfree']['val_loss']:.4f} loss_aux={r['aux']['val_loss']:.4f} "
        f"loss_none={r['none']['val_loss']:.4f}"
    )


if __name__ == "__main__":
    main()
