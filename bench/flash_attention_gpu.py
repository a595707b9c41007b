"""lmforge's Triton FlashAttention kernel vs PyTorch SDPA on a CUDA GPU: forward and
forward + backward time, causal, bf16, and the largest difference of the outputs.

`lmforge.nn.flash_attention_triton.triton_flash_attention` (batched ``[B, H, T, D]``, the
varlen kernel over equal-length rows) against ``F.scaled_dot_product_attention(is_causal=True)``
(PyTorch picks its FlashAttention-2 / cuDNN backend), same inputs; CUDA events, median of
``--repeats`` after warm-up. GQA shapes use ``--kv-heads`` < ``--heads`` (SDPA gets K/V
repeated to all heads, as the model's eager path does).

    python bench/flash_attention_gpu.py [--seqs 1024 4096 8192] [--heads 16] [--kv-heads 4] [--dim 128]

Last line: ``RESULT flash_attention_gpu fwd_ratio_<T>=… fwdbwd_ratio_<T>=…`` (SDPA time ÷
lmforge time: > 1 means lmforge is faster). Without a GPU it prints the reason and exits 0.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F


def cuda_time(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` timed calls after 3 warm-ups."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(t: int, b: int, h: int, hkv: int, d: int, repeats: int) -> dict[str, float]:
    """Forward and forward + backward ms of both sides at sequence length ``t``; prints a line."""
    from lmforge.nn.flash_attention_triton import triton_flash_attention

    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(t)
    q = torch.randn(b, h, t, d, device=dev, dtype=dt, generator=g, requires_grad=True)
    k = torch.randn(b, hkv, t, d, device=dev, dtype=dt, generator=g, requires_grad=True)
    v = torch.randn(b, hkv, t, d, device=dev, dtype=dt, generator=g, requires_grad=True)
    grad = torch.randn(b, h, t, d, device=dev, dtype=dt, generator=g)
    rep = h // hkv

    def ours():
        return triton_flash_attention(q, k, v, causal=True)

    def sdpa():
        kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return F.scaled_dot_product_attention(q, kk, vv, is_causal=True)

    with torch.no_grad():
        err = (ours().float() - sdpa().float()).abs().max().item()
        f_ours, f_sdpa = cuda_time(ours, repeats), cuda_time(sdpa, repeats)
    b_ours = cuda_time(lambda: ours().backward(grad), repeats)
    b_sdpa = cuda_time(lambda: sdpa().backward(grad), repeats)
    flops = 4 * b * h * t * t * d / 2  # causal: half of QKᵀ and PV
    print(f"T={t:>6}: forward lmforge {f_ours:7.3f} ms ({flops / f_ours / 1e9:6.1f} TFLOP/s)"
          f"  SDPA {f_sdpa:7.3f} ms ({flops / f_sdpa / 1e9:6.1f})  | fwd+bwd lmforge"
          f" {b_ours:7.3f} ms  SDPA {b_sdpa:7.3f} ms  | max |diff| {err:.3e}")  # fmt: skip
    return {f"fwd_ratio_{t}": f_sdpa / f_ours, f"fwdbwd_ratio_{t}": b_sdpa / b_ours,
            f"max_diff_{t}": err}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("flash_attention_gpu: no CUDA GPU here; nothing to measure")
        print("RESULT flash_attention_gpu skipped=1")
        return
    b, h, hkv, d = args.batch, args.heads, args.kv_heads, args.dim
    result: dict[str, float] = {}
    print(f"{torch.cuda.get_device_name(0)}, bf16, causal, B={b}, H={h}, Hkv={hkv}, D={d}")
    for t in args.seqs:
        result.update(measure(t, b, h, hkv, d, args.repeats))
    print("RESULT flash_attention_gpu " + " ".join(f"{k}={v:.3g}" for k, v in result.items()))


if __name__ == "__main__":
    main()
