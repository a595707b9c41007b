"""FlashAttention reference (`lmforge.nn.flash_attention`, readable PyTorch) vs PyTorch SDPA.

Informational: the reference exists to be read and to check the Triton kernel against, not to
be fast on a CPU (it loops over tiles in Python). Causal self-attention, fp32, GQA (8 query
heads, 2 K/V heads), forward and forward + backward, median CPU time of ``--repeats`` runs, and the
largest difference from SDPA (values and q-gradient) so the speed is of a correct result.

    python bench/flash_attention.py [--seq 512] [--dim 64] [--block 64] [--threads 1]

Last line: ``RESULT flash_attention fwd_ratio=<reference ÷ SDPA time> fwdbwd_ratio=<…>
max_err=<…>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lmforge.nn.flash_attention import flash_attention


def timed(fn, repeats: int) -> float:
    """Median CPU seconds of ``fn()`` (the process's CPU time: robust to other processes on
    a shared machine; with ``--threads`` > 1 it sums the threads)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, args.seq, args.dim, generator=g, requires_grad=True)
    k = torch.randn(1, 2, args.seq, args.dim, generator=g, requires_grad=True)
    v = torch.randn(1, 2, args.seq, args.dim, generator=g, requires_grad=True)

    def ours():
        return flash_attention(q, k, v, block_q=args.block, block_k=args.block)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def backward(fn):
        def run():
            q.grad = k.grad = v.grad = None
            fn().sum().backward()

        return run

    with torch.no_grad():
        err = (ours() - sdpa()).abs().max().item()
    backward(ours)()
    grad_ours = q.grad.clone()
    backward(sdpa)()
    err = max(err, (grad_ours - q.grad).abs().max().item())
    with torch.no_grad():
        fwd = [timed(ours, args.repeats), timed(sdpa, args.repeats)]
    both = [timed(backward(ours), args.repeats), timed(backward(sdpa), args.repeats)]
    print(f"causal, T={args.seq}, 8 query / 2 K/V heads, d={args.dim}, blocks {args.block}, "
          f"fp32, {args.threads} thread(s); max |difference| {err:.1e}")  # fmt: skip
    print(
        f"forward:            reference {1e3 * fwd[0]:8.1f} CPU ms   SDPA {1e3 * fwd[1]:8.1f} CPU ms"
    )
    print(
        f"forward + backward: reference {1e3 * both[0]:8.1f} CPU ms   SDPA {1e3 * both[1]:8.1f} CPU ms"
    )
    print(
        f"RESULT flash_attention fwd_ratio={fwd[0] / fwd[1]:.2f} "
        f"fwdbwd_ratio={both[0] / both[1]:.2f} max_err={err:.1e}"
    )


if __name__ == "__main__":
    main()
