"""Tune the launches of lmforge's Triton FlashAttention kernels on a CUDA GPU, then measure the
tuned kernels against PyTorch SDPA (as `bench/flash_attention_gpu.py` does).

Each of the three kernels (`lmforge.nn.flash_attention_triton`: the forward ``fwd``, the
backward's ``dkdv`` and ``dq``) gets its own tiles, warps and pipeline stages. One kernel's
candidates are timed with the other two fixed (forward alone; forward + backward for the
backward kernels), bf16, causal, at ``--seq`` tokens; candidates that do not fit the GPU's
shared memory are skipped; the sweep stops at ``--budget`` seconds with the best found so far.
The winners are checked against SDPA (values and gradients) and timed at ``--seqs``; the
table to paste into ``CUDA_CONFIGS`` is printed, and written to ``--out`` as JSON.

    python bench/flash_attention_tune.py [--dims 128 64] [--seq 4096] [--budget 240] [--out F]

Last line: ``RESULT flash_attention_tune fwd_ratio_<T>=… fwdbwd_ratio_<T>=…`` (SDPA time ÷
lmforge time at head dim ``--dims[0]``). Without a GPU it prints the reason and exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch
import torch.nn.functional as F
from flash_attention_gpu import cuda_time  # bench/ is on the path when run as a script

FWD = [(bm, bn, w, s) for bm, bn, w, s in itertools.product(
    (64, 128), (32, 64, 128), (4, 8), (2, 3, 4))]  # fmt: skip
DKDV = [(bm, bn, w, s) for bm, bn, w, s in itertools.product(
    (32, 64, 128), (64, 128), (4, 8), (2, 3))]  # fmt: skip
DQ = [(bm, bn, w, s) for bm, bn, w, s in itertools.product(
    (64, 128), (32, 64, 128), (4, 8), (2, 3))]  # fmt: skip


# --grid small: the neighbourhood of what won on an H200 (fwd 64 × 64, 4 warps, 3 stages)
SMALL = {
    "fwd": [(64, 64, 4, 3), (128, 64, 8, 3)],
    "dkdv": [(bm, bn, 4, s) for bm, bn, s in itertools.product((32, 64), (64, 128), (2, 3))],
    "dq": [(bm, bn, w, 2) for bm, bn, w in itertools.product((64, 128), (32, 64), (4, 8))],
}


def inputs(b: int, h: int, hkv: int, t: int, d: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cuda").manual_seed(t + d)
    make = lambda heads: torch.randn(  # noqa: E731
        b, heads, t, d, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True
    )
    return make(h), make(hkv), make(hkv), torch.randn(b, h, t, d, device="cuda",
                                                    dtype=torch.bfloat16, generator=g)  # fmt: skip


def sweep(d: int, args, deadline: float) -> dict:
    """The best ``KernelConfig`` per kernel at head dim ``d`` (the sweep order: fwd, dkdv, dq)."""
    from lmforge.nn.flash_attention_triton import (
        KernelConfig,
        kernel_configs,
        triton_flash_attention,
    )

    q, k, v, grad = inputs(args.batch, args.heads, args.kv_heads, args.seq, d)
    best = kernel_configs(d, q.device)
    grids = SMALL if args.grid == "small" else {"fwd": FWD, "dkdv": DKDV, "dq": DQ}
    for name, candidates in grids.items():
        timed = []
        for cand in candidates:
            if time.time() > deadline:
                print(f"  {name}: budget spent after {len(timed)} candidates")
                break
            configs = dict(best, **{name: KernelConfig(*cand)})
            if name == "fwd":
                fn = lambda c=configs: triton_flash_attention(q, k, v, configs=c)  # noqa: E731
            else:
                fn = lambda c=configs: triton_flash_attention(q, k, v, configs=c).backward(grad)  # noqa: E731
            try:
                with torch.no_grad() if name == "fwd" else torch.enable_grad():
                    ms = cuda_time(fn, 5)
            except Exception as err:  # noqa: BLE001 - out of shared memory, no such layout
                print(f"  {name} {cand}: skipped ({type(err).__name__})")
                continue
            timed.append((ms, cand))
            print(f"  {name} {cand}: {ms:.3f} ms")
        if timed:
            ms, cand = min(timed)
            best[name] = KernelConfig(*cand)
            print(f"D={d} {name}: best {cand} {ms:.3f} ms of {len(timed)}")
    return best


def compare(t: int, d: int, configs: dict, args) -> dict[str, float]:
    """Tuned kernel vs SDPA at ``t`` tokens: forward and forward + backward ms, largest
    differences of the output and of the gradients."""
    from lmforge.nn.flash_attention_triton import triton_flash_attention

    q, k, v, grad = inputs(args.batch, args.heads, args.kv_heads, t, d)
    rep = args.heads // args.kv_heads

    def ours():
        return triton_flash_attention(q, k, v, configs=configs)

    def sdpa():
        kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return F.scaled_dot_product_attention(q, kk, vv, is_causal=True)

    out_ours = ours()
    out_ours.backward(grad)
    g_ours = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    out_sdpa = sdpa()
    out_sdpa.backward(grad)
    g_sdpa = [x.grad.clone() for x in (q, k, v)]
    diff = (out_ours.float() - out_sdpa.float()).abs().max().item()
    gdiff = max((a.float() - b.float()).abs().max().item() for a, b in zip(g_ours, g_sdpa))
    with torch.no_grad():
        f_ours, f_sdpa = cuda_time(ours, 10), cuda_time(sdpa, 10)
    b_ours = cuda_time(lambda: ours().backward(grad), 10)
    b_sdpa = cuda_time(lambda: sdpa().backward(grad), 10)
    flops = 4 * args.batch * args.heads * t * t * d / 2
    print(f"D={d} T={t:>5}: forward {f_ours:.3f} ms ({flops / f_ours / 1e9:.0f} TFLOP/s) vs SDPA"
          f" {f_sdpa:.3f} ({flops / f_sdpa / 1e9:.0f}) | fwd+bwd {b_ours:.3f} vs {b_sdpa:.3f} ms"
          f" | max |diff| out {diff:.2e} grads {gdiff:.2e}")  # fmt: skip
    return {f"fwd_ratio_{t}": f_sdpa / f_ours, f"fwdbwd_ratio_{t}": b_sdpa / b_ours,
            f"max_diff_{t}": diff, f"max_grad_diff_{t}": gdiff}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--seq", type=int, default=4096, help="sequence length of the sweep")
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--budget", type=float, default=240.0, help="seconds for all sweeps")
    ap.add_argument("--grid", choices=["full", "small"], default="full")
    ap.add_argument("--out", default="", help="write the tuned table here as JSON")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("flash_attention_tune: no CUDA GPU here; nothing to tune")
        print("RESULT flash_attention_tune skipped=1")
        return
    print(f"{torch.cuda.get_device_name(0)}, bf16, causal, B={args.batch}, H={args.heads}, "
          f"Hkv={args.kv_heads}, sweep at T={args.seq}")  # fmt: skip
    start = time.time()
    table: dict[int, dict] = {}
    for i, d in enumerate(args.dims):
        share = (args.budget - (time.time() - start)) / (len(args.dims) - i)
        table[d] = sweep(d, args, time.time() + share)
    result: dict[str, float] = {}
    for t in args.seqs:
        result.update(compare(t, args.dims[0], table[args.dims[0]], args))
    print("CUDA_CONFIGS = {")
    for d, configs in table.items():
        print(
            f"    {d}: {{"
            + ", ".join(f'"{n}": KernelConfig{tuple(c)}' for n, c in configs.items())
            + "},"
        )
    print("}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({str(d): {n: list(c) for n, c in cs.items()} for d, cs in table.items()},
                      f, indent=1)  # fmt: skip
    print("RESULT flash_attention_tune " + " ".join(f"{k}={v:.3g}" for k, v in result.items()))


if __name__ == "__main__":
    main()
