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
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - absent, or built for another torch
    triton = tl = None

__all__ = [
    "TRITON_AVAILABLE",
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
    def _flash_fwd(
        Q, K, V, Out, LSE, cu_q, cu_k, scale,
        stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
        stride_on, stride_oh, stride_lh,
        num_heads, groups, head_dim,
        CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """Algorithm 1: one query block of one (sequence, head)."""
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
            end = k_len
            if CAUSAL:
                end = tl.minimum(k_len, (block + 1) * BLOCK_M + offset)
            for n0 in range(0, end, BLOCK_N):
                keys = n0 + cols
                k = _load_tile(
                    K, k_start, keys, k_len, stride_kn, kv_head * stride_kh, offs_d, head_dim
                )
                v = _load_tile(
                    V, k_start, keys, k_len, stride_vn, kv_head * stride_vh, offs_d, head_dim
                )
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
                allowed = keys[None, :] < k_len
                if CAUSAL:
                    allowed = allowed & (keys[None, :] <= rows[:, None] + offset)
                s = tl.where(allowed, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.exp(s - m_safe[:, None])
                alpha = tl.exp(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                acc = acc * alpha[:, None] + pv
                m_i = m_new
            seen = l_i > 0
            out = acc / tl.where(seen, l_i, 1.0)[:, None]
            lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
            row_ok = rows < q_len
            o_ptrs = (
                Out + (q_start + rows)[:, None] * stride_on + head * stride_oh + offs_d[None, :]
            )
            tl.store(o_ptrs, out.to(Out.dtype.element_ty),
                     mask=row_ok[:, None] & (offs_d[None, :] < head_dim))  # fmt: skip
            tl.store(LSE + head * stride_lh + q_start + rows, lse, mask=row_ok)

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
        of that head (the group sum is taken outside)."""
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
            first = 0
            if CAUSAL:  # query rows before block·BLOCK_N − offset cannot see this block
                first = tl.maximum(block * BLOCK_N - offset, 0) // BLOCK_M * BLOCK_M
            for m0 in range(first, q_len, BLOCK_M):
                rows = m0 + offs_m
                q = _load_tile(
                    Q, q_start, rows, q_len, stride_qn, head * stride_qh, offs_d, head_dim
                )
                do = _load_tile(
                    DO, q_start, rows, q_len, stride_don, head * stride_doh, offs_d, head_dim
                )
                row_ok = rows < q_len
                lse = tl.load(LSE + head * stride_lh + q_start + rows, mask=row_ok, other=0.0)
                delta = tl.load(DELTA + head * stride_lh + q_start + rows, mask=row_ok, other=0.0)
                lse = tl.where(lse == float("-inf"), float("inf"), lse)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
                allowed = row_ok[:, None] & (keys[None, :] < k_len)
                if CAUSAL:
                    allowed = allowed & (keys[None, :] <= rows[:, None] + offset)
                p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
                dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
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
            lse = tl.where(lse == float("-inf"), float("inf"), lse)
            dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            end = k_len
            if CAUSAL:
                end = tl.minimum(k_len, (block + 1) * BLOCK_M + offset)
            for n0 in range(0, end, BLOCK_N):
                keys = n0 + cols
                k = _load_tile(
                    K, k_start, keys, k_len, stride_kn, kv_head * stride_kh, offs_d, head_dim
                )
                v = _load_tile(
                    V, k_start, keys, k_len, stride_vn, kv_head * stride_vh, offs_d, head_dim
                )
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
                allowed = row_ok[:, None] & (keys[None, :] < k_len)
                if CAUSAL:
                    allowed = allowed & (keys[None, :] <= rows[:, None] + offset)
                p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
                dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            dq = dq * scale
            dq_ptrs = (
                DQ + (q_start + rows)[:, None] * stride_dqn + head * stride_dqh + offs_d[None, :]
            )
            tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty),
                     mask=row_ok[:, None] & (offs_d[None, :] < head_dim))  # fmt: skip


def _block_sizes(head_dim: int, block_m: int, block_n: int) -> tuple[int, int, int]:
    """Tile sizes: ≥ 16 each (``tl.dot``'s minimum), the head dim padded to a power of two."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    return max(16, block_m), max(16, block_n), block_d


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
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, block_m, block_n):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        heads, kv_heads, d = q.shape[1], k.shape[1], q.shape[2]
        bm, bn, bd = _block_sizes(d, block_m, block_n)
        out = torch.empty_like(q)
        lse = torch.empty(heads, q.shape[0], dtype=torch.float32, device=q.device)
        num_seqs = cu_q.numel() - 1
        _flash_fwd[_grid(max_q, bm, num_seqs, heads)](
            q, k, v, out, lse, cu_q, cu_k, scale,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), lse.stride(0),
            heads, heads // kv_heads, d,
            CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, PRECISION=_precision(q),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
        ctx.settings = (max_q, max_k, causal, scale, bm, bn, bd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        max_q, max_k, causal, scale, bm, bn, bd = ctx.settings
        do = grad_out.contiguous()
        heads, kv_heads, d = q.shape[1], k.shape[1], q.shape[2]
        groups, num_seqs = heads // kv_heads, cu_q.numel() - 1
        delta = (do.float() * out.float()).sum(-1).t().contiguous()  # Δ [H, N]
        dq = torch.empty_like(q)
        dk = torch.empty(k.shape[0], heads, d, dtype=k.dtype, device=k.device)  # per query head
        dv = torch.empty(v.shape[0], heads, d, dtype=v.dtype, device=v.device)
        common = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                  do.stride(0), do.stride(1))  # fmt: skip
        _flash_bwd_dkdv[_grid(max_k, bn, num_seqs, heads)](
            q, k, v, do, lse, delta, dk, dv, cu_q, cu_k, scale, *common,
            dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), lse.stride(0),
            heads, groups, d,
            CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, PRECISION=_precision(q),
        )  # fmt: skip
        _flash_bwd_dq[_grid(max_q, bm, num_seqs, heads)](
            q, k, v, do, lse, delta, dq, cu_q, cu_k, scale, *common,
            dq.stride(0), dq.stride(1), lse.stride(0),
            heads, groups, d,
            CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, PRECISION=_precision(q),
        )  # fmt: skip
        dk = dk.view(k.shape[0], kv_heads, groups, d).sum(2)
        dv = dv.view(v.shape[0], kv_heads, groups, d).sum(2)
        return dq, dk, dv, None, None, None, None, None, None, None, None


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
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """`lmforge.nn.flash_attention.flash_attention_varlen` as Triton kernels (differentiable):
    ``q`` ``[N, H, D]``, ``k`` / ``v`` ``[N_k, Hkv, D]``, int32 ``cu_seqlens`` ``[S + 1]``
    (``cu_seqlens_k``: the keys', default the same) and the longest sequence's length."""
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
    return TritonFlashAttention.apply(
        q, k, v, cu_q, cu_k, int(max_seqlen), int(max_k), causal, scale, block_m, block_n
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
