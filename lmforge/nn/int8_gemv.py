"""lmforge's one-row int8 product (a C++ op): ``y_n = s_n Σ_k q_nk x_k``.

Weight-only int8 (`lmforge.nn.quant.Int8Linear`: codes ``q [N, K]``, fp32 scale ``s_n`` per
output channel; Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", eq. 1 with a zero weight offset) times one fp32
activation row ``x [1, K]``, the product of every batch-1 decode step. Activations stay fp32:
the result is the fp32 row product ``(q.float() * x).sum(-1) * s`` up to summation order.

Why a hand kernel: inductor writes that row reduction (`lmforge.infer.decode_step`'s
``_row_product``) as one loop per output row with ONE 16-lane float accumulator, so each
16 codes wait for the previous add (``tmp_acc0_vec = tmp_acc0_vec + tmp3`` in its generated
C++): from L2 that is 11 GB/s of codes on this 2-core AMD EPYC (Zen 4, AVX-512), 12–16
GB/s over a 30m model's weights, where fp32 rows — 64 bytes per add — reach ≈ 26 GB/s.
``kernels/gemv.cpp`` reads one row at a time with 8 independent accumulators (128
codes per step: widen 16 codes, convert, FMA), prefetches 4 KB ahead, and splits the output
rows over torch's intra-op threads (``at::parallel_for``); AVX-512 behind a runtime CPU
check, else AVX2 + FMA (the same loop on 8 lanes: on an AVX2-only EPYC the portable loop
took 11.7 of 16.9 ms per 30m int8 decode token, the AVX2 one 2.4 ms; eager int8 decode 66 →
179 tok/s, 1 thread), a portable loop elsewhere. Several weights that share ``x`` (q/k/v, gate/up) go
through one call, their outputs concatenated.

Measured (1 thread, CPU time, medians of rounds alternated in one process; another helper's
training run on the second core, so memory bandwidth was shared and noisy):

* one ``[1376, 512]`` matrix from L2: 64 µs inductor, 35 µs op (11 → 20 GB/s); the inner
  loop alone runs at 25–27 GB/s from L1/L2 — compute-bound (3 vector ops per 16 codes).
* all 57 int8 products of one 30m token (33 op calls, 31.6 MB of codes; a scratch script
  over ``quantize_model(CausalLM(preset_config("30m")), "int8")``), inductor → op:
  2.26 → 1.94 ms (14.0 → 16.2 GB/s), earlier runs 2.09 → 1.86, 2.18 → 2.00, 2.16 → 1.93,
  1.96 → 1.54; 2.27 → 2.40 with two more jobs on the 2 cores. Without the prefetch the op
  was SLOWER than inductor from memory (2.7–3.5 ms: it outruns the hardware prefetcher);
  4 rows interleaved (x loads shared) were 2× faster from L2 and 2–3× slower from memory.
* the compiled 30m int8 decode step alone (bucket (1, 4), direct calls): 2.70 → 2.40 ms
  (earlier 2.77 → 2.49, 2.74 → 2.65, 2.48 → 2.41; 2.65 → 2.91 with load average 3);
  5m: 0.53 → 0.49 ms.
* whole generation (`lmforge.infer.engine.Engine`, ``compile_decode=True``), 128 greedy
  tokens after a 32-token prompt, identical tokens: 30m 3.14 → 2.66 ms per token (318 →
  376 tok/s); other runs 3.76 → 3.24, 3.24 → 3.07, and 3.48 → 3.61 under heavier load;
  5m 0.70 → 0.71 (no gain: its weights stay in cache and the step is op overhead).
* build (g++ -O3, ninja, on the loaded machine): 9 s once; later processes load it in 0.4 s.

The op (``torch.ops.lmforge_ext.int8_gemv``, with a fake implementation so that
``torch.compile`` traces it) is one of lmforge's C++ ops, built together on first use by
`lmforge.nn.cpp_ops` (never fatal): `int8_gemv_available` is false where they do not build
and `int8_gemv_unavailable_reason` says why (or ``LMFORGE_INT8_GEMV=0``, which turns off this
op alone).
"""

from __future__ import annotations

import os

import torch

from lmforge.nn.cpp_ops import cpp_ops_unavailable_reason

__all__ = [
    "int8_gemv",
    "int8_gemv_available",
    "int8_gemv_isa",
    "int8_gemv_parts",
    "int8_gemv_q8_parts",
    "int8_gemv_q8_supported",
    "int8_gemv_unavailable_reason",
]


def int8_gemv_unavailable_reason() -> str | None:
    """Why the op cannot run here (building lmforge's C++ ops on the first call), or None."""
    if os.environ.get("LMFORGE_INT8_GEMV", "1") == "0":
        return "turned off by LMFORGE_INT8_GEMV=0"
    return cpp_ops_unavailable_reason()


def int8_gemv_available() -> bool:
    """Whether `int8_gemv` can run (builds the op on the first call; never raises)."""
    return int8_gemv_unavailable_reason() is None


def int8_gemv_isa() -> str:
    """The kernel the op picked on this CPU: ``"avx512"`` or ``"portable"``."""
    if not int8_gemv_available():
        raise RuntimeError(f"int8_gemv is unavailable: {int8_gemv_unavailable_reason()}")
    return torch.ops.lmforge_ext.int8_gemv_isa()


def int8_gemv_parts(
    x: torch.Tensor,
    weights: list[torch.Tensor] | tuple[torch.Tensor, ...],
    scales: list[torch.Tensor] | tuple[torch.Tensor, ...],
    portable: bool = False,
) -> torch.Tensor:
    """``[s_1 ⊙ q_1 x ‖ s_2 ⊙ q_2 x ‖ …]``: the products of one fp32 row ``x`` (``[K]`` or
    ``[1, K]``) with int8 weights ``q_i [N_i, K]`` and fp32 scales ``s_i [N_i]``, concatenated
    (``[ΣN_i]`` or ``[1, ΣN_i]``, fp32). ``portable`` forces the non-AVX-512 loop (tests).
    Call `int8_gemv_available` first."""
    return torch.ops.lmforge_ext.int8_gemv(x, list(weights), list(scales), portable)


def int8_gemv(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``y_n = s_n Σ_k q_nk x_k`` (Jacob et al. 2018, eq. 1, zero weight offset) for fp32
    ``x [1, K]`` (or ``[K]``), int8 ``q [N, K]``, fp32 ``s [N]`` → fp32 ``[1, N]`` (or ``[N]``).
    Call `int8_gemv_available` first."""
    return torch.ops.lmforge_ext.int8_gemv(x, [q], [s], False)


def int8_gemv_q8_supported() -> bool:
    """Whether `int8_gemv_q8_parts` runs here: the op builds and the CPU has AVX-512 VNNI or
    AVX2."""
    return int8_gemv_available() and bool(torch.ops.lmforge_ext.int8_gemv_q8_supported())


def int8_gemv_q8_parts(
    x: torch.Tensor,
    weights: list[torch.Tensor] | tuple[torch.Tensor, ...],
    scales: list[torch.Tensor] | tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """`int8_gemv_parts` as int8 × int8: ``x ≈ s_x · x_q`` with one scale per call
    (``s_x = max|x| / 127``, Jacob et al. 2018 eq. 1 for the activations too), then
    ``y_n = s_n s_x Σ_k q_nk x_q,k`` in int32 by AVX-512 VNNI (``VPDPBUSD``: 64 products per
    instruction, the codes streamed once) or AVX2 (``VPMADDUBSW`` on |q| and sign(q)·x_q,
    pairs in int16 without saturation, then ``VPMADDWD``) — the per-row activation quantisation of the
    multi-row int8 × int8 path (`lmforge.infer.int8_gemm`), for one row. Call
    `int8_gemv_q8_supported` first."""
    return torch.ops.lmforge_ext.int8_gemv_q8(x, list(weights), list(scales))
