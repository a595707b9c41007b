"""lmforge vs transformers: forward+backward and forward-only tokens/s, identical weights.

Both models are built from one `ModelConfig` (Llama family, presets ``5m`` and ``30m``),
the HF model loads lmforge's export, and both run the same batch on the same device in
fp32. Timings interleave the two libraries round by round and report medians, so slow
drift of the machine affects both alike.

    python bench/model_throughput.py [--sizes 5m 30m] [--batch 8] [--seq 256] [--rounds 5]

Last line: ``RESULT model_throughput ratio=<x>`` — lmforge ÷ HF training tokens/s
(geometric mean over the sizes).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

import torch

import lmforge
from lmforge.models.presets import preset_config


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _train_step(model, ids):
    def step():
        out = model(ids, labels=ids)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def _forward(model, ids):
    def step():
        with torch.no_grad():
            model(ids)

    return step


def bench_size(name: str, batch: int, seq: int, rounds: int, repeats: int, device: str) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ours = lmforge.CausalLM(preset_config(name)).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        lmforge.save_model(ours, tmp)
        hf = AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").to(device)
    ours.train()
    hf.train()
    ids = torch.randint(0, ours.config.vocab_size, (batch, seq), device=device)
    with torch.no_grad():
        diff = (ours(ids).logits - hf(ids).logits).abs().max().item()
    assert diff < 1e-3, f"models disagree (max |Δlogits| = {diff})"

    results = {}
    for mode, make in (("train", _train_step), ("forward", _forward)):
        fns = {"lmforge": make(ours, ids), "hf": make(hf, ids)}
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {"lmforge": [], "hf": []}
        for r in range(rounds):
            order = ("lmforge", "hf") if r % 2 == 0 else ("hf", "lmforge")
            for lib in order:
                times[lib].append(_time(fns[lib], repeats))
        tokens = batch * seq
        for lib in times:
            results[f"{mode}_{lib}"] = tokens / statistics.median(times[lib])
        results[f"{mode}_ratio"] = results[f"{mode}_lmforge"] / results[f"{mode}_hf"]
    results["params"] = ours.num_parameters()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["5m", "30m"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"device {args.device}, threads {torch.get_num_threads()}, fp32, "
        f"batch {args.batch} x seq {args.seq}"
    )
    ratios = []
    for name in args.sizes:
        r = bench_size(name, args.batch, args.seq, args.rounds, args.repeats, args.device)
        ratios.append(r["train_ratio"])
        print(
            f"{name:>4} ({r['params'] / 1e6:.1f}M params) "
            f"train: lmforge {r['train_lmforge']:,.0f} tok/s  hf {r['train_hf']:,.0f} tok/s  "
            f"ratio {r['train_ratio']:.3f} | "
            f"forward: lmforge {r['forward_lmforge']:,.0f} tok/s  hf {r['forward_hf']:,.0f} tok/s  "
            f"ratio {r['forward_ratio']:.3f}"
        )
    geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    print(f"RESULT model_throughput ratio={geo:.3f}")


if __name__ == "__main__":
    main()
