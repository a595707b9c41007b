"""DeepSeek LLM's scaling laws at toy scale on CPU: a (batch size × learning rate) grid at
several compute budgets and IsoFLOP profiles over model shapes, all trained through
``lmforge pretrain`` on the synthetic corpus (`lmforge.eval.sweep`), then the four power
laws fitted (`lmforge.eval.scaling`) and reported beside the paper's exponents
(B: 0.3271, η: −0.1250, M: 0.5243, D: 0.4757), whatever they turn out to be at this scale.

    python bench/scaling_laws.py --tiny        # ≈ 5–10 minutes: 4 budgets, 48 runs
    python bench/scaling_laws.py               # the full sweep (≤ 30 CPU-minutes)

Writes ``runs.jsonl`` (resumable), ``fit.json`` (for ``lmforge scaling plan --fit``) and
``scaling_laws.png`` (runs and fitted lines) into ``--out``. Last line:
``RESULT scaling_laws b_exp=<x> lr_exp=<y> m_exp=<m> d_exp=<d>``.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from lmforge.eval.scaling import PAPER_FIT, fit_scaling_laws, near_optimal, save_fit
from lmforge.eval.sweep import hyper_points, isoflop_points, run_sweep, sweep_base_config

SETTINGS = {
    "tiny": dict(seq_len=32, docs=600, budgets=[1e9, 2e9, 4e9, 8e9], batch_sizes=[2, 4, 8],
                 lrs=[1e-2, 2e-2, 4e-2], shape=(1, 48), shapes=[(1, 32), (1, 48), (2, 48), (2, 96)]),
    # Budgets 3e10–3.5e11 on (2 layers, d 48); batches of 128–2,048 tokens and peak lrs
    # 3e-3–3e-2 bracket the optima seen in session 4's 1e11–8e11 sweep (where the smallest
    # batch and the largest lr sat on the grid's edge); the IsoFLOP shapes reach down to
    # (1, 32) so the smallest budgets have an interior optimum to find.
    "full": dict(seq_len=64, docs=3000, budgets=[3e10, 7e10, 1.5e11, 3.5e11],
                 batch_sizes=[2, 4, 8, 16, 32], lrs=[3e-3, 1e-2, 3e-2], shape=(2, 48),
                 shapes=[(1, 32), (1, 48), (2, 48), (2, 64), (2, 96)], split_batch=8),
}  # fmt: skip


def plot(hyper, split, fit, path: Path) -> None:
    """Near-optimal batch sizes and learning rates, IsoFLOP optima, with the fitted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    good = near_optimal(hyper)
    budgets = np.array(sorted({r["compute"] for r in hyper + split}))
    for ax, key, law, label in ((axes[0], "batch", fit.batch, "batch (tokens)"),
                                (axes[1], "lr", fit.lr, "learning rate")):  # fmt: skip
        ax.scatter([r["compute"] for r in hyper], [r[key] for r in hyper], c="lightgray", s=12)
        ax.scatter([r["compute"] for r in good], [r[key] for r in good], c="C0", s=20)
        if law is not None:
            ax.plot(budgets, [law(c) for c in budgets], "C1-",
                    label=f"{law.coefficient:.3g}·C^{law.exponent:.3f}")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel=label)
        ax.legend()
    for c in budgets:
        runs = sorted((r for r in split if r["compute"] == c), key=lambda r: r["model_scale"])
        axes[2].plot([r["model_scale"] for r in runs], [r["loss"] for r in runs], "o-",
                     label=f"C={c:.1e}")  # fmt: skip
    axes[2].set(xscale="log", xlabel="model scale M (FLOPs/token)", ylabel="validation loss",
                title="IsoFLOP profiles")  # fmt: skip
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the small configuration")
    parser.add_argument("--out", default="runs/bench-scaling-laws", help="output folder")
    parser.add_argument("--tolerance", type=float, default=0.0025, help="near-optimal band")
    args = parser.parse_args()
    s = SETTINGS["tiny" if args.tiny else "full"]
    out = Path(args.out) / ("tiny" if args.tiny else "full")
    start = time.perf_counter()
    base = sweep_base_config(out, seq_len=s["seq_len"], docs=s["docs"])
    hyper = run_sweep(base, hyper_points(s["budgets"], s["batch_sizes"], s["lrs"], *s["shape"]),
                      out)  # fmt: skip
    split = run_sweep(base, isoflop_points(hyper, s["shapes"], s.get("split_batch")), out)
    fit = fit_scaling_laws(hyper, split, args.tolerance)
    save_fit(out / "fit.json", fit)
    plot(hyper, split, fit, out / "scaling_laws.png")
    minutes = (time.perf_counter() - start) / 60
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_minutes = sum(u.ru_utime + u.ru_stime for u in used) / 60  # this invocation only
    runs = {r["name"]: r for r in hyper + split}.values()  # a shape can sit in both sweeps
    sweep_cpu = sum(float(r.get("cpu_s", "nan")) for r in runs) / 60
    print(f"{len(runs)} runs: {sweep_cpu:.1f} CPU-min of training in all (per-run cpu_s in "
          f"runs.jsonl); this invocation {minutes:.1f} min wall, {cpu_minutes:.1f} CPU-min "
          f"(runs already in runs.jsonl are not redone); {out}/runs.jsonl, fit.json, "
          "scaling_laws.png")  # fmt: skip
    print("| law | fitted exponent | DeepSeek LLM |\n|---|---|---|")
    exps = {}
    for name, short in (("batch", "b"), ("lr", "lr"), ("model_scale", "m"), ("tokens", "d")):
        law, paper = getattr(fit, name), getattr(PAPER_FIT, name)
        exps[short] = float("nan") if law is None else law.exponent
        print(f"| {name} | {exps[short]:.4f} | {paper.exponent:.4f} |")
    print(f"RESULT scaling_laws b_exp={exps['b']:.4f} lr_exp={exps['lr']:.4f} "
          f"m_exp={exps['m']:.4f} d_exp={exps['d']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
