"""PEFT vs full fine-tuning on the ≈30M preset: trainable parameters, optimizer-state
bytes, peak memory and step time for full fine-tuning, LoRA (r=8, r=16), prefix tuning
and bottleneck adapters.

Each method runs in a fresh subprocess so its peak memory is its own: build the model,
add the adapter, build AdamW over the trainable parameters, then ``--steps`` training
steps (forward, backward, step) on random tokens.

Peak memory: CUDA ``max_memory_allocated``; on CPU the process's peak resident set
(``ru_maxrss``) minus the resident set just before the first step (what training adds:
gradients, optimizer moments, activations). Optimizer state: the bytes of AdamW's
``exp_avg``/``exp_avg_sq`` after the steps. Step time: median over the steps after the
first.

    python bench/peft_memory.py [--preset 30m] [--seq 256] [--batch 4] [--steps 4]

Last line: ``RESULT peft lora_optimizer_state_ratio=<x> lora_step_ratio=<y>`` (LoRA r=16
÷ full fine-tuning).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

METHODS = ("full", "lora8", "lora16", "prefix", "adapter")


def run_one(method: str, preset: str, seq: int, batch: int, steps: int, device: str) -> dict:
    import torch

    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.peft import apply_adapters, apply_lora, apply_prefix_tuning
    from lmforge.train.optim import build_adamw

    torch.manual_seed(0)
    model = CausalLM(preset_config(preset)).to(device)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if method.startswith("lora"):
        apply_lora(model, r=int(method[4:]), alpha=2 * int(method[4:]), target_modules=targets)
    elif method == "prefix":
        apply_prefix_tuning(model, 20)
    elif method == "adapter":
        apply_adapters(model, bottleneck=16)
    opt = build_adamw(model, lr=1e-4, fused=False)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    state_bytes = sum(v.numel() * v.element_size() for s in opt.state.values()
                      for v in s.values() if torch.is_tensor(v) and v.ndim > 0)  # fmt: skip
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "method": method,
        "trainable": trainable,
        "total": sum(p.numel() for p in model.parameters()),
        "optimizer_state_bytes": state_bytes,
        "peak_bytes": peak,
        "step_s": statistics.median(times[1:] if len(times) > 1 else times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="30m")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.preset, a.seq, a.batch, a.steps, a.device)))
        return
    rows = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--one", method, "--preset", a.preset, "--seq",
               str(a.seq), "--batch", str(a.batch), "--steps", str(a.steps), "--device", a.device]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[method] = json.loads(out.strip().splitlines()[-1])
    print(f"preset {a.preset}, batch {a.batch} x seq {a.seq}, {a.steps} steps on {a.device}")
    print(f"{'method':8} {'trainable':>12} {'optim state':>12} {'peak':>10} {'step':>9}")
    for r in rows.values():
        print(f"{r['method']:8} {r['trainable']:>12,} {r['optimizer_state_bytes'] / 2**20:>9.2f} MiB "
              f"{r['peak_bytes'] / 2**20:>7.1f} MiB {r['step_s'] * 1e3:>7.1f} ms")  # fmt: skip
    full, lora = rows["full"], rows["lora16"]
    state_ratio = lora["optimizer_state_bytes"] / full["optimizer_state_bytes"]
    step_ratio = lora["step_s"] / full["step_s"]
    print(
        f"RESULT peft lora_optimizer_state_ratio={state_ratio:.4f} lora_step_ratio={step_ratio:.3f}"
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
