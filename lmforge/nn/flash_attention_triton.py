"""FlashAttention as Triton kernels: the algorithm of `lmforge.nn.flash_attention` (tiled
online-softmax forward saving the log-sum-exp, recomputing backward; Dao 2023,
"FlashAttention-2", Algorithms 1–2) for packed variable-length sequences, causal, with GQA.

    out = triton_flash_attention_varlen(q, k, v, cu_seqlens, max_seqlen)   # [N, H, D], [N, Hkv, D]
    out = triton_flash_attention(q, k, v)                                   # [B, H, T, D] causal

One program handles one block of ``BLOCK_M`` query rows of one sequence and one query head
(grid: sequences·heads × query blocks); it streams the sequence's key blocks (only those at or
before the block's last row when causal) keeping the running max ``m``, sum ``ℓ`` and output
accumulator in registers, and stores ``O = acc / ℓ`` and ``L = m + log ℓ``. The backward runs
two kernels, so no atomics are needed: one program per *key* block accumulates ``dK``, ``dV``
over the query blocks (FlashAttention-2 Algorithm 2), one per *query* block accumulates
``dQ`` over the key blocks; ``Δ = rowsum(dO ∘ O)`` is one PyTorch reduction. Under GQA each
query head writes its own ``dK``/``dV`` slice, summed over the group afterwards. Tiles
accumulate in fp32; fp32 inputs multiply in full fp32 (not the GPU's default TF32).

Without Triton (``pip install triton``) `TRITON_AVAILABLE` is False and the functions raise.
On a CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` set before Triton
is imported) — slow, used by the tests against the reference. The model uses the kernel on a
CUDA GPU when asked to (`triton_attention_enabled`: ``LMFORGE_ATTENTION=triton``), through the
hook in `lmforge.nn.attention`.

This file is long because the three kernels, their shared tile loops and the launch table
tuned for them are one algorithm: split apart, a change to one pass could not be read
against the others.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - absent, or built for another torch
    triton = tl = None

__all__ = [
    "CUDA_CONFIGS",
    "TRITON_AVAILABLE",
    "KernelConfig",
    "kernel_configs",
    "triton_attention_enabled",
    "triton_flash_attention",
    "triton_flash_attention_varlen",
]

TRITON_AVAILABLE = triton is not None


def triton_attention_enabled(x: torch.Tensor) -> bool:
    """Use the Triton kernel for ``x``'s attention: Triton imports, ``x`` is on a CUDA GPU (or
    Triton's CPU interpreter is on), and the user opted in with ``LMFORGE_ATTENTION=triton``."""
    if not TRITON_AVAILABLE or os.environ.get("LMFORGE_ATTENTION", "") != "triton":
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if TRITON_AVAILABLE:

    @triton.jit
    def _load_tile(ptr, start, rows, length, stride_n, head_off, offs_d, head_dim):
        """``[len(rows), BLOCK_D]`` tile of rows ``start + rows`` (0 past ``length`` / D)."""
        mask = (rows[:, None] < length) & (offs_d[None, :] < head_dim)
        ptrs = ptr + (start + rows)[:, None] * stride_n + head_off + offs_d[None, :]
        return tl.load(ptrs, mask=mask, other=0.0)

    @triton.jit
    def _fwd_blocks(
        acc, l_i, m_i, q, K, V, k_start, k_len, stride_kn, stride_vn, kv_off_k, kv_off_v,
        rows, cols, offs_d, head_dim, qk_scale, offset, lo, hi,
        MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        """Key blocks ``[lo, hi)`` of Algorithm 1's inner loop in base 2 (``qk_scale`` holds
        ``log₂e / √d``, so ``exp2(s − m)`` = ``exp(QKᵀ/√d − m ln 2)``). Only the blocks that
        straddle the causal diagonal or the sequence's end (``MASKED``) build the mask."""
        for n0 in range(lo, hi, BLOCK_N):
            keys = n0 + cols
            k = _load_tile(K, k_start, keys, k_len, stride_kn, kv_off_k, offs_d, head_dim)
            v = _load_tile(V, k_start, keys, k_len, stride_vn, kv_off_v, offs_d, head_dim)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            if MASKED:
                allowed = keys[None, :] < k_len
                if CAUSAL:
                    allowed = allowed & (keys[None, :] <= rows[:, None] + offset)
                s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def _flash_fwd(
        Q, K, V, Out, LSE, cu_q, cu_k, scale,
        stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
        stride_on, stride_oh, stride_lh,
        num_heads, groups, head_dim,
        CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """Algorithm 1: one query block of one (sequence, head). The key blocks every row of
        the block sees in full (before the diagonal, inside the sequence) run unmasked; the
        rest (the diagonal's blocks, the sequence's last partial block) masked."""
        block = tl.program_id(1)
        seq = tl.program_id(0) // num_heads
        head = tl.program_id(0) % num_heads
        kv_head = head // groups
        q_start = tl.load(cu_q + seq)
        q_len = tl.load(cu_q + seq + 1) - q_start
        k_start = tl.load(cu_k + seq)
        k_len = tl.load(cu_k + seq + 1) - k_start
        if block * BLOCK_M < q_len:
            offset = k_len - q_len  # bottom-right causal alignment (prefill after a cache)
            rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
            cols = tl.arange(0, BLOCK_N)
            offs_d = tl.arange(0, BLOCK_D)
            q = _load_tile(Q, q_start, rows, q_len, stride_qn, head * stride_qh, offs_d, head_dim)
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            qk_scale = scale * 1.4426950408889634  # log₂ e
            end = k_len
            full = k_len
            if CAUSAL:
                end = tl.minimum(k_len, (block + 1) * BLOCK_M + offset)
                # keys ≤ the block's first row + offset are visible to all of its rows
                full = tl.minimum(k_len, tl.maximum(block * BLOCK_M + offset + 1, 0))
            full = full // BLOCK_N * BLOCK_N
            kv_k, kv_v = kv_head * stride_kh, kv_head * stride_vh
            acc, l_i, m_i = _fwd_blocks(
                acc, l_i, m_i, q, K, V, k_start, k_len, stride_kn, stride_vn, kv_k, kv_v,
                rows, cols, offs_d, head_dim, qk_scale, offset, 0, full,
                False, CAUSAL, BLOCK_N, PRECISION,
            )  # fmt: skip
            acc, l_i, m_i = _fwd_blocks(
                acc, l_i, m_i, q, K, V, k_start, k_len, stride_kn, stride_vn, kv_k, kv_v,
                rows, cols, offs_d, head_dim, qk_scale, offset, full, end,
                True, CAUSAL, BLOCK_N, PRECISION,
            )  # fmt: skip
            seen = l_i > 0
            out = acc / tl.where(seen, l_i, 1.0)[:, None]
            log2_sum = m_i + tl.log2(tl.where(seen, l_i, 1.0))
            lse = tl.where(seen, log2_sum * 0.6931471805599453, float("-inf"))  # back to base e
            row_ok = rows < q_len
            o_ptrs = (
                Out + (q_start + rows)[:, None] * stride_on + head * stride_oh + offs_d[None, :]
            )
            tl.store(o_ptrs, out.to(Out.dtype.element_ty),
                     mask=row_ok[:, None] & (offs_d[None, :] < head_dim))  # fmt: skip
            tl.store(LSE + head * stride_lh + q_start + rows, lse, mask=row_ok)

    @triton.jit
    def _dkdv_blocks(
        dk, dv, k, v, Q, DO, LSE, DELTA, q_start, q_len, stride_qn, stride_don, q_off, do_off,
        l_off, keys, offs_m, offs_d, head_dim, qk_scale, offset, lo, hi,
        MASKED: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """Query blocks ``[lo, hi)`` of Algorithm 2's inner loop for one key block:
        ``dV += Pᵀ dO``, ``dK += dSᵀ Q`` with ``dS = P ∘ (dO Vᵀ − Δ)``. Rows past the sequence
        load as zeros and add nothing; only blocks crossing the causal diagonal (``MASKED``)
        build the mask."""
        for m0 in range(lo, hi, BLOCK_M):
            rows = m0 + offs_m
            row_ok = rows < q_len
            q = _load_tile(Q, q_start, rows, q_len, stride_qn, q_off, offs_d, head_dim)
            do = _load_tile(DO, q_start, rows, q_len, stride_don, do_off, offs_d, head_dim)
            lse = tl.load(LSE + l_off + q_start + rows, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + l_off + q_start + rows, mask=row_ok, other=0.0)
            lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.exp2(s - lse[:, None])
            if MASKED:
                p = tl.where(keys[None, :] <= rows[:, None] + offset, p, 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        return dk, dv

    @triton.jit
    def _flash_bwd_dkdv(
        Q, K, V, DO, LSE, DELTA, DK, DV, cu_q, cu_k, scale,
        stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
        stride_don, stride_doh, stride_dkn, stride_dkh, stride_dvn, stride_dvh, stride_lh,
        num_heads, groups, head_dim,
        CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """Algorithm 2, outer loop: one key block of one (sequence, query head); dK, dV
        of that head (the group sum is taken outside). Keys past the sequence are never
        stored, so only the causal diagonal needs a mask."""
        block = tl.program_id(1)
        seq = tl.program_id(0) // num_heads
        head = tl.program_id(0) % num_heads
        kv_head = head // groups
        q_start = tl.load(cu_q + seq)
        q_len = tl.load(cu_q + seq + 1) - q_start
        k_start = tl.load(cu_k + seq)
        k_len = tl.load(cu_k + seq + 1) - k_start
        if block * BLOCK_N < k_len:
            offset = k_len - q_len
            keys = block * BLOCK_N + tl.arange(0, BLOCK_N)
            offs_m = tl.arange(0, BLOCK_M)
            offs_d = tl.arange(0, BLOCK_D)
            k = _load_tile(
                K, k_start, keys, k_len, stride_kn, kv_head * stride_kh, offs_d, head_dim
            )
            v = _load_tile(
                V, k_start, keys, k_len, stride_vn, kv_head * stride_vh, offs_d, head_dim
            )
            dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            qk_scale = scale * 1.4426950408889634  # log₂ e: P = exp2(s·log₂e − L·log₂e)
            first = 0
            full = 0
            if CAUSAL:  # query rows before block·BLOCK_N − offset cannot see this block;
                # rows from block·BLOCK_N + BLOCK_N − 1 − offset on see all of it
                first = tl.maximum(block * BLOCK_N - offset, 0) // BLOCK_M * BLOCK_M
                full = tl.maximum(block * BLOCK_N + BLOCK_N - 1 - offset, 0)
                full = tl.maximum((full + BLOCK_M - 1) // BLOCK_M * BLOCK_M, first)
            q_off, do_off, l_off = head * stride_qh, head * stride_doh, head * stride_lh
            dk, dv = _dkdv_blocks(
                dk, dv, k, v, Q, DO, LSE, DELTA, q_start, q_len, stride_qn, stride_don,
                q_off, do_off, l_off, keys, offs_m, offs_d, head_dim, qk_scale, offset,
                first, tl.minimum(full, q_len), True, BLOCK_M, PRECISION,
            )  # fmt: skip
            dk, dv = _dkdv_blocks(
                dk, dv, k, v, Q, DO, LSE, DELTA, q_start, q_len, stride_qn, stride_don,
                q_off, do_off, l_off, keys, offs_m, offs_d, head_dim, qk_scale, offset,
                tl.maximum(full, first), q_len, False, BLOCK_M, PRECISION,
            )  # fmt: skip
            dk = dk * scale
            ok = (keys[:, None] < k_len) & (offs_d[None, :] < head_dim)
            dk_ptrs = (
                DK + (k_start + keys)[:, None] * stride_dkn + head * stride_dkh + offs_d[None, :]
            )
            dv_ptrs = (
                DV + (k_start + keys)[:, None] * stride_dvn + head * stride_dvh + offs_d[None, :]
            )
            tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=ok)
            tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=ok)

    @triton.jit
    def _dq_blocks(
        dq, q, do, lse, delta, K, V, k_start, k_len, stride_kn, stride_vn, kv_off_k, kv_off_v,
        rows, cols, offs_d, head_dim, qk_scale, offset, lo, hi,
        MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        """Key blocks ``[lo, hi)`` of one query block's ``dQ += dS K``; as `_fwd_blocks`,
        only the diagonal's and the sequence end's blocks (``MASKED``) build the mask."""
        for n0 in range(lo, hi, BLOCK_N):
            keys = n0 + cols
            k = _load_tile(K, k_start, keys, k_len, stride_kn, kv_off_k, offs_d, head_dim)
            v = _load_tile(V, k_start, keys, k_len, stride_vn, kv_off_v, offs_d, head_dim)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.exp2(s - lse[:, None])
            if MASKED:
                allowed = keys[None, :] < k_len
                if CAUSAL:
                    allowed = allowed & (keys[None, :] <= rows[:, None] + offset)
                p = tl.where(allowed, p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        return dq

    @triton.jit
    def _flash_bwd_dq(
        Q, K, V, DO, LSE, DELTA, DQ, cu_q, cu_k, scale,
        stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
        stride_don, stride_doh, stride_dqn, stride_dqh, stride_lh,
        num_heads, groups, head_dim,
        CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """dQ of one query block: ``scale · Σ_j dS_ij K_j`` over the visible key blocks."""
        block = tl.program_id(1)
        seq = tl.program_id(0) // num_heads
        head = tl.program_id(0) % num_heads
        kv_head = head // groups
        q_start = tl.load(cu_q + seq)
        q_len = tl.load(cu_q + seq + 1) - q_start
        k_start = tl.load(cu_k + seq)
        k_len = tl.load(cu_k + seq + 1) - k_start
        if block * BLOCK_M < q_len:
            offset = k_len - q_len
            rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
            cols = tl.arange(0, BLOCK_N)
            offs_d = tl.arange(0, BLOCK_D)
            row_ok = rows < q_len
            q = _load_tile(Q, q_start, rows, q_len, stride_qn, head * stride_qh, offs_d, head_dim)
            do = _load_tile(
                DO, q_start, rows, q_len, stride_don, head * stride_doh, offs_d, head_dim
            )
            lse = tl.load(LSE + head * stride_lh + q_start + rows, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + head * stride_lh + q_start + rows, mask=row_ok, other=0.0)
            lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
            dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            qk_scale = scale * 1.4426950408889634
            end = k_len
            full = k_len
            if CAUSAL:
                end = tl.minimum(k_len, (block + 1) * BLOCK_M + offset)
                full = tl.minimum(k_len, tl.maximum(block * BLOCK_M + offset + 1, 0))
            full = full // BLOCK_N * BLOCK_N
            kv_k, kv_v = kv_head * stride_kh, kv_head * stride_vh
            dq = _dq_blocks(
                dq, q, do, lse, delta, K, V, k_start, k_len, stride_kn, stride_vn, kv_k, kv_v,
                rows, cols, offs_d, head_dim, qk_scale, offset, 0, full,
                False, CAUSAL, BLOCK_N, PRECISION,
            )  # fmt: skip
            dq = _dq_blocks(
                dq, q, do, lse, delta, K, V, k_start, k_len, stride_kn, stride_vn, kv_k, kv_v,
                rows, cols, offs_d, head_dim, qk_scale, offset, full, end,
                True, CAUSAL, BLOCK_N, PRECISION,
            )  # fmt: skip
            dq = dq * scale
            dq_ptrs = (
                DQ + (q_start + rows)[:, None] * stride_dqn + head * stride_dqh + offs_d[None, :]
            )
            tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty),
                     mask=row_ok[:, None] & (offs_d[None, :] < head_dim))  # fmt: skip


class KernelConfig(NamedTuple):
    """One kernel's launch: tile rows ``block_m`` (queries) × ``block_n`` (keys), and Triton's
    ``num_warps`` / ``num_stages`` (software-pipelined loads)."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 3


# Tiles per kernel on a CUDA GPU, by head dim: the winners of `bench/flash_attention_tune.py` on
# an H200 (bf16, causal, B 4, H 16, Hkv 4, T 4,096; BENCHMARKS.md "FlashAttention kernel tuning
# on an H200"). A dK/dV tile of 32 query rows (32 × 64) gave gradients far from SDPA's there
# (max abs 0.47–0.64 against 0.03 with 64 × 64; not yet explained: the interpreter agrees with
# the reference at 16 × 32), so the table keeps 64-row dK/dV tiles. Elsewhere (the
# interpreter) every kernel uses 64 × 64.
CUDA_CONFIGS: dict[int, dict[str, KernelConfig]] = {
    64: {
        "fwd": KernelConfig(128, 64, 8, 3),
        "dkdv": KernelConfig(64, 64, 4, 3),
        "dq": KernelConfig(64, 64, 4, 2),
    },
    128: {
        "fwd": KernelConfig(128, 64, 8, 3),
        "dkdv": KernelConfig(64, 64, 4, 2),
        "dq": KernelConfig(64, 64, 4, 2),
    },
}


def kernel_configs(
    head_dim: int,
    device: torch.device,
    block_m: int | None = None,
    block_n: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, KernelConfig]:
    """The launches of the three kernels (``fwd``, ``dkdv``, ``dq``): the tuned table on a CUDA
    GPU for 16-bit inputs (the entry for the next head dim up), 64 × 64 elsewhere (fp32 tiles
    take twice the shared memory); ``block_m`` / ``block_n`` override every kernel's tiles."""
    configs = {name: KernelConfig(64, 64) for name in ("fwd", "dkdv", "dq")}
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        fits = [d for d in sorted(CUDA_CONFIGS) if d >= head_dim]
        configs = dict(CUDA_CONFIGS[fits[0] if fits else max(CUDA_CONFIGS)])
    return {
        name: c._replace(block_m=block_m or c.block_m, block_n=block_n or c.block_n)
        for name, c in configs.items()
    }


def _tiles(head_dim: int, config: KernelConfig) -> dict:
    """Launch keywords: tiles ≥ 16 each (``tl.dot``'s minimum), the head dim padded to a power
    of two, and the warps / stages."""
    return {
        "BLOCK_M": max(16, config.block_m),
        "BLOCK_N": max(16, config.block_n),
        "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
    }


def _precision(q: torch.Tensor) -> str:
    """fp32 inputs multiply in full fp32 ("ieee"; a GPU's default TF32 keeps 10 mantissa
    bits, too few to match SDPA in fp32); half precision is unaffected."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _grid(max_seqlen: int, block: int, num_seqs: int, num_heads: int) -> tuple[int, int]:
    """(sequences × heads, blocks of the longest sequence): the long axis first (CUDA's
    second and third grid axes stop at 65,535)."""
    return (num_seqs * num_heads, triton.cdiv(max(max_seqlen, 1), block))


class TritonFlashAttention(torch.autograd.Function):
    """Packed ``[N, H, D]`` / ``[N, Hkv, D]`` attention through the three kernels above."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, configs):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        heads, kv_heads, d = q.shape[1], k.shape[1], q.shape[2]
        tiles = _tiles(d, configs["fwd"])
        out = torch.empty_like(q)
        lse = torch.empty(heads, q.shape[0], dtype=torch.float32, device=q.device)
        num_seqs = cu_q.numel() - 1
        _flash_fwd[_grid(max_q, tiles["BLOCK_M"], num_seqs, heads)](
            q, k, v, out, lse, cu_q, cu_k, scale,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), lse.stride(0),
            heads, heads // kv_heads, d,
            CAUSAL=causal, PRECISION=_precision(q), **tiles,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
        ctx.settings = (max_q, max_k, causal, scale, configs)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        max_q, max_k, causal, scale, configs = ctx.settings
        do = grad_out.contiguous()
        heads, kv_heads, d = q.shape[1], k.shape[1], q.shape[2]
        groups, num_seqs = heads // kv_heads, cu_q.numel() - 1
        delta = (do.float() * out.float()).sum(-1).t().contiguous()  # Δ [H, N]
        dq = torch.empty_like(q)
        dk = torch.empty(k.shape[0], heads, d, dtype=k.dtype, device=k.device)  # per query head
        dv = torch.empty(v.shape[0], heads, d, dtype=v.dtype, device=v.device)
        common = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                  do.stride(0), do.stride(1))  # fmt: skip
        tiles = _tiles(d, configs["dkdv"])
        _flash_bwd_dkdv[_grid(max_k, tiles["BLOCK_N"], num_seqs, heads)](
            q, k, v, do, lse, delta, dk, dv, cu_q, cu_k, scale, *common,
            dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), lse.stride(0),
            heads, groups, d,
            CAUSAL=causal, PRECISION=_precision(q), **tiles,
        )  # fmt: skip
        tiles = _tiles(d, configs["dq"])
        _flash_bwd_dq[_grid(max_q, tiles["BLOCK_M"], num_seqs, heads)](
            q, k, v, do, lse, delta, dq, cu_q, cu_k, scale, *common,
            dq.stride(0), dq.stride(1), lse.stride(0),
            heads, groups, d,
            CAUSAL=causal, PRECISION=_precision(q), **tiles,
        )  # fmt: skip
        dk = dk.view(k.shape[0], kv_heads, groups, d).sum(2)
        dv = dv.view(v.shape[0], kv_heads, groups, d).sum(2)
        return dq, dk, dv, None, None, None, None, None, None, None


def triton_flash_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_k: int | None = None,
    causal: bool = True,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    configs: dict[str, KernelConfig] | None = None,
) -> torch.Tensor:
    """`lmforge.nn.flash_attention.flash_attention_varlen` as Triton kernels (differentiable):
    ``q`` ``[N, H, D]``, ``k`` / ``v`` ``[N_k, Hkv, D]``, int32 ``cu_seqlens`` ``[S + 1]``
    (``cu_seqlens_k``: the keys', default the same) and the longest sequence's length.
    Launches: ``configs`` (``fwd`` / ``dkdv`` / ``dq``) else `kernel_configs` (``block_m`` /
    ``block_n`` override the tiles)."""
    if not TRITON_AVAILABLE:
        raise RuntimeError("Triton is not installed (pip install triton)")
    if q.ndim != 3 or k.shape != v.shape or q.shape[1] % k.shape[1] or q.shape[2] != k.shape[2]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: expected [N, H, D] "
            "and [N, Hkv, D] with H a multiple of Hkv"
        )
    cu_q = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    cu_k = cu_q if cu_seqlens_k is None else cu_seqlens_k.to(q.device, torch.int32).contiguous()
    max_k = max_seqlen if max_seqlen_k is None else max_seqlen_k
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else scale
    if configs is None:
        configs = kernel_configs(q.shape[2], q.device, block_m, block_n, q.dtype)
    return TritonFlashAttention.apply(
        q, k, v, cu_q, cu_k, int(max_seqlen), int(max_k), causal, scale, configs
    )


def triton_flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, **kwargs
) -> torch.Tensor:
    """Batched ``[B, H, T, D]`` (k / v ``[B, Hkv, T, D]``) attention without padding: the
    rows become equal-length sequences of the varlen kernel."""
    b, h, t, d = q.shape
    tk = k.shape[2]
    flat = lambda x: x.transpose(1, 2).reshape(b * x.shape[2], x.shape[1], d)  # noqa: E731
    cu_q = torch.arange(b + 1, device=q.device, dtype=torch.int32) * t
    cu_k = torch.arange(b + 1, device=q.device, dtype=torch.int32) * tk
    out = triton_flash_attention_varlen(
        flat(q), flat(k), flat(v), cu_q, t, cu_seqlens_k=cu_k, max_seqlen_k=tk, causal=causal,
        **kwargs,
    )  # fmt: skip
    return out.view(b, t, h, d).transpose(1, 2)
