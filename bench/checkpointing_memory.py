"""Activation checkpointing: peak memory saved vs step-time overhead (≈30M preset, seq 1024).

Each setting runs in a fresh subprocess so its peak is its own: build the model and AdamW,
then ``--steps`` full training steps (forward, backward, optimizer step) on random tokens.

Peak memory:
  * CUDA: ``torch.cuda.max_memory_allocated`` over the steps.
  * CPU: the process's peak resident set (``ru_maxrss``) minus the resident set just
    before the first step (model, optimizer state and the Python/torch runtime are already
    resident; gradients and optimizer moments are created by the first step, so they count
    on both sides). The figure is what the training steps add at their peak.

Overhead: median step time with checkpointing ÷ without, minus one.

A third run adds the chunked next-token loss (``train.loss_chunk_size``): with every block
checkpointed, the ``[B, T, V]`` logits and their cross-entropy buffers are the largest thing
left, and chunking removes them too.

    python bench/checkpointing_memory.py [--preset 30m] [--seq 1024] [--batch 4] [--every 1]

Last line: ``RESULT checkpointing memory_saved=<fraction> overhead=<fraction>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_one(
    preset: str, seq: int, batch: int, every: int, steps: int, device: str, chunk: int = 0
) -> dict:
    import lmforge
    from lmforge.models.presets import preset_config

    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config(preset, max_position_embeddings=max(seq, 2048)))
    model.to(device).train()
    model.model.gradient_checkpointing = every
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = model(ids, labels=ids, loss_chunk_size=chunk).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"peak_bytes": peak, "step_s": statistics.median(times[1:] or times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="30m")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--every", type=int, default=1, help="checkpoint every k-th block")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loss-chunk", type=int, default=1024, help="third run's chunk size")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        result = run_one(
            args.preset, args.seq, args.batch, args.child, args.steps, args.device, args.child_chunk
        )
        print(json.dumps(result))
        return
    results = {}
    settings = {"off": (0, 0), "on": (args.every, 0), "on+chunked": (args.every, args.loss_chunk)}
    for name, (every, chunk) in settings.items():
        cmd = [sys.executable, __file__, "--child", str(every), "--child-chunk", str(chunk)]
        cmd += ["--preset", args.preset, "--seq", str(args.seq), "--batch", str(args.batch)]
        cmd += ["--steps", str(args.steps), "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[name] = r = json.loads(out.strip().splitlines()[-1])
        label = (
            "off" if not every else f"every {every}" + (f" + loss chunks {chunk}" if chunk else "")
        )
        print(
            f"checkpointing {label:>26}: peak +{r['peak_bytes'] / 2**20:8.1f} MiB, "
            f"step {r['step_s'] * 1000:8.1f} ms"
        )
    off = results["off"]
    summary = {}
    for name in ("on", "on+chunked"):
        saved = 1 - results[name]["peak_bytes"] / off["peak_bytes"]
        overhead = results[name]["step_s"] / off["step_s"] - 1
        summary[name] = (saved, overhead)
        print(
            f"{args.preset}, batch {args.batch} × seq {args.seq} on {args.device}, {name}: "
            f"memory saved {saved:.1%}, step-time overhead {overhead:.1%}"
        )
    saved, overhead = summary["on"]
    chunk_saved, chunk_overhead = summary["on+chunked"]
    print(
        f"RESULT checkpointing memory_saved={saved:.3f} overhead={overhead:.3f} "
        f"with_chunked_loss_saved={chunk_saved:.3f} with_chunked_loss_overhead={chunk_overhead:.3f}"
    )


if __name__ == "__main__":
    main()
