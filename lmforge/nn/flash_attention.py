"""FlashAttention in readable PyTorch: the tiled online-softmax forward and the recomputing
backward (Dao et al. 2022, "FlashAttention", Algorithms 1–2; Dao 2023, "FlashAttention-2",
Algorithms 1–2), as the reference for the Triton kernel (`lmforge.nn.flash_attention_triton`).

    out = flash_attention(q, k, v, causal=True)                    # [B, H, Tq, D], k/v [B, Hkv, Tk, D]
    out = flash_attention(q, k, v, key_valid=mask)                 # padding: mask [B, Tk], True = real
    out = flash_attention_varlen(q, k, v, cu_seqlens)              # packed: [N, H, D], [S + 1] int

Attention never builds the ``[Tq, Tk]`` score matrix. Queries are cut into blocks of
``block_q`` rows and keys / values into blocks of ``block_k``; for each query block the key
blocks stream past while three running quantities are kept per row (FlashAttention-2 eq. of
Algorithm 1, lines 8–10):

    m_j = max(m_{j−1}, rowmax(S_j))                      running max of the scores
    ℓ_j = e^{m_{j−1} − m_j} ℓ_{j−1} + rowsum(e^{S_j − m_j})   running softmax denominator
    O_j = e^{m_{j−1} − m_j} O_{j−1} + e^{S_j − m_j} V_j     unnormalised output

with ``S_j = Q_i K_jᵀ · scale``; at the end ``O = O_last / ℓ`` and the log-sum-exp
``L = m + log ℓ`` is saved — the only per-row statistic the backward needs. The backward
recomputes ``P = exp(S − L)`` block by block instead of storing it (FlashAttention-2,
Algorithm 2) with ``Δ = rowsum(dO ∘ O)``:

    dV_j = Σ_i P_ijᵀ dO_i     dP_ij = dO_i V_jᵀ     dS_ij = P_ij ∘ (dP_ij − Δ_i)
    dQ_i = scale Σ_j dS_ij K_j     dK_j = scale Σ_i dS_ijᵀ Q_i

Masks: ``causal`` aligns the last query with the last key (a query at row ``i`` of ``Tq`` sees
keys ``j ≤ i + Tk − Tq``: a prefill after ``Tk − Tq`` cached tokens), key blocks wholly in
the future are skipped, ``key_valid`` removes padded keys, ``window`` keeps keys with
``i − j < window`` (sliding-window attention). GQA: ``H`` query heads share ``Hkv`` K/V heads
(``H / Hkv`` queries per K/V head), and ``dK``, ``dV`` sum over each group. A row that sees
no key at all (every key padding) gets output 0 and ``L = −inf`` (SDPA gives NaN there).
Accumulators are fp32 (fp64 for fp64 inputs); outputs take the input dtype.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "FlashAttentionFunction",
    "accumulator_dtype",
    "flash_attention",
    "flash_attention_varlen",
]


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision and fp32 inputs, fp64 for fp64 (the tests' exact checks)."""
    return torch.promote_types(dtype, torch.float32)


def _key_allowed(
    q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, window: int | None
) -> torch.Tensor:
    """``[bq, bk]`` boolean: may the query at (absolute) ``q_pos`` see the key at ``k_pos``."""
    allowed = torch.ones(len(q_pos), len(k_pos), dtype=torch.bool, device=q_pos.device)
    if causal:
        allowed &= k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= q_pos[:, None] - k_pos[None, :] < window
    return allowed


def _block_mask(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    key_valid: torch.Tensor | None,
    causal: bool,
    window: int | None,
) -> torch.Tensor:
    """``[B or 1, 1, 1, bq, bk]`` mask of one (query block, key block) tile."""
    allowed = _key_allowed(q_pos, k_pos, causal, window)[None, None, None]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, None, k_pos]
    return allowed


def _key_block_range(q_lo: int, q_hi: int, tk: int, offset: int, causal: bool, window, bk: int):
    """Start offsets of the key blocks the query rows ``[q_lo, q_hi)`` can see (causal and
    window bounds skip whole blocks; ``offset`` = Tk − Tq places queries after the cache)."""
    hi = min(tk, q_hi + offset) if causal else tk
    lo = 0 if window is None else max(0, q_lo + offset - window + 1)
    return range((lo // bk) * bk, hi, bk)


def _forward(q, k, v, scale, causal, key_valid, window, bq, bk):
    """Tiled forward (FlashAttention-2 Algorithm 1). ``q`` ``[B, Hkv, G, Tq, D]``, ``k`` /
    ``v`` ``[B, Hkv, 1, Tk, D]`` (the group axis G broadcasts: GQA without copies).
    Returns ``out`` (fp32, same shape as q) and ``lse`` ``[B, Hkv, G, Tq]``."""
    tq, tk = q.shape[-2], k.shape[-2]
    offset = tk - tq
    acc_dtype = accumulator_dtype(q.dtype)
    out = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
    lse = torch.full(q.shape[:-1], -math.inf, dtype=acc_dtype, device=q.device)
    k_all = torch.arange(tk, device=q.device)
    for q_lo in range(0, tq, bq):
        q_hi = min(q_lo + bq, tq)
        qi = q[..., q_lo:q_hi, :].to(acc_dtype)
        q_pos = torch.arange(q_lo, q_hi, device=q.device) + offset
        row_max = torch.full(qi.shape[:-1], -math.inf, dtype=acc_dtype, device=q.device)
        row_sum = torch.zeros(qi.shape[:-1], dtype=acc_dtype, device=q.device)
        acc = torch.zeros(qi.shape, dtype=acc_dtype, device=q.device)
        for k_lo in _key_block_range(q_lo, q_hi, tk, offset, causal, window, bk):
            k_hi = min(k_lo + bk, tk)
            kj, vj = k[..., k_lo:k_hi, :].to(acc_dtype), v[..., k_lo:k_hi, :].to(acc_dtype)
            scores = (qi @ kj.transpose(-1, -2)) * scale
            mask = _block_mask(q_pos, k_all[k_lo:k_hi], key_valid, causal, window)
            scores = scores.masked_fill(~mask, -math.inf)
            new_max = torch.maximum(row_max, scores.amax(-1))
            safe_max = new_max.masked_fill(new_max == -math.inf, 0.0)  # rows with no key yet
            p = torch.exp(scores - safe_max[..., None])
            rescale = torch.exp(row_max - safe_max)
            row_sum = rescale * row_sum + p.sum(-1)
            acc = rescale[..., None] * acc + p @ vj
            row_max = new_max
        seen = row_sum > 0
        out[..., q_lo:q_hi, :] = acc / torch.where(seen, row_sum, 1.0)[..., None]
        lse[..., q_lo:q_hi] = torch.where(seen, row_max + torch.log(row_sum), -math.inf)
    return out, lse


def _backward(q, k, v, out, lse, grad_out, scale, causal, key_valid, window, bq, bk):
    """Recomputing backward (FlashAttention-2 Algorithm 2): outer loop over key blocks,
    inner over query blocks; ``P`` is rebuilt from the saved ``lse``. Shapes as `_forward`;
    ``dk`` / ``dv`` come back summed over the group axis."""
    tq, tk = q.shape[-2], k.shape[-2]
    offset = tk - tq
    acc_dtype = accumulator_dtype(q.dtype)
    qf, kf, vf, do = (t.to(acc_dtype) for t in (q, k, v, grad_out))
    delta = (do * out.to(acc_dtype)).sum(-1)  # Δ_i = rowsum(dO_i ∘ O_i)
    lse_safe = lse.masked_fill(lse == -math.inf, math.inf)  # rows that saw nothing: P = 0
    dq = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc_dtype, device=q.device)
    dv = torch.zeros(v.shape, dtype=acc_dtype, device=q.device)
    q_all = torch.arange(tq, device=q.device)
    for k_lo in range(0, tk, bk):
        k_hi = min(k_lo + bk, tk)
        kj, vj = kf[..., k_lo:k_hi, :], vf[..., k_lo:k_hi, :]
        k_pos = torch.arange(k_lo, k_hi, device=q.device)
        for q_lo in range(0, tq, bq):
            q_hi = min(q_lo + bq, tq)
            if k_lo not in _key_block_range(q_lo, q_hi, tk, offset, causal, window, bk):
                continue  # the forward skipped this tile too
            qi, doi = qf[..., q_lo:q_hi, :], do[..., q_lo:q_hi, :]
            scores = (qi @ kj.transpose(-1, -2)) * scale
            mask = _block_mask(q_all[q_lo:q_hi] + offset, k_pos, key_valid, causal, window)
            p = torch.exp(scores - lse_safe[..., q_lo:q_hi, None]).masked_fill(~mask, 0.0)
            dv[..., k_lo:k_hi, :] += (p.transpose(-1, -2) @ doi).sum(2, keepdim=True)
            dp = doi @ vj.transpose(-1, -2)
            ds = p * (dp - delta[..., q_lo:q_hi, None])
            dq[..., q_lo:q_hi, :] += scale * (ds @ kj)
            dk[..., k_lo:k_hi, :] += scale * (ds.transpose(-1, -2) @ qi).sum(2, keepdim=True)
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """``autograd.Function`` over grouped tensors ``q`` ``[B, Hkv, G, Tq, D]``, ``k`` / ``v``
    ``[B, Hkv, 1, Tk, D]``: saves ``q, k, v, out, lse`` (no score matrix) for backward."""

    @staticmethod
    def forward(ctx, q, k, v, scale, causal, key_valid, window, block_q, block_k):
        out, lse = _forward(q, k, v, scale, causal, key_valid, window, block_q, block_k)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (scale, causal, key_valid, window, block_q, block_k)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, grad_out, *ctx.settings)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_valid: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention ``softmax(Q Kᵀ · scale + M) V`` computed tile by tile.

    Args:
        q: ``[B, H, Tq, D]``; k, v: ``[B, Hkv, Tk, D]`` with ``H`` a multiple of ``Hkv``.
        causal: query ``i`` sees keys ``j ≤ i + Tk − Tq`` (bottom-right aligned).
        key_valid: ``[B, Tk]``, True on real keys (padding masked out), or None.
        window: keep keys with ``i + Tk − Tq − j < window`` (sliding window), or None.
        scale: default ``1/√D``.
        block_q, block_k: tile sizes (results do not depend on them beyond rounding).
        return_lse: also return the log-sum-exp ``[B, H, Tq]`` (the accumulator dtype).

    Differentiable in ``q``, ``k``, ``v`` through the recomputing backward.
    """
    b, h, tq, d = q.shape
    hkv = k.shape[1]
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d or h % hkv:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: expected "
            "[B, H, Tq, D] and [B, Hkv, Tk, D] with H a multiple of Hkv"
        )
    if key_valid is not None and key_valid.shape != (b, k.shape[2]):
        raise ValueError(f"key_valid {tuple(key_valid.shape)} must be [B, Tk] = {(b, k.shape[2])}")
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_q={block_q}, block_k={block_k} must be ≥ 1")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    grouped_q = q.view(b, hkv, h // hkv, tq, d)
    valid = None if key_valid is None else key_valid.bool()
    out, lse = FlashAttentionFunction.apply(
        grouped_q, k.unsqueeze(2), v.unsqueeze(2), scale, causal, valid, window,
        block_q, block_k,
    )  # fmt: skip
    out = out.reshape(b, h, tq, d)
    return (out, lse.reshape(b, h, tq)) if return_lse else out


def flash_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """Attention over packed sequences, flash-attn's varlen layout: ``q`` ``[N, H, D]``,
    ``k`` / ``v`` ``[N_k, Hkv, D]``, ``cu_seqlens`` ``[S + 1]`` cumulative query lengths
    (``cu_seqlens_k`` for the keys, default the same). Sequence ``s`` attends only within
    ``[cu[s], cu[s+1])``: no padding and no cross-sequence attention. ``kwargs`` go to
    `flash_attention` (``causal``, ``window``, ``scale``, block sizes)."""
    cu_q = [int(x) for x in cu_seqlens]
    cu_k = cu_q if cu_seqlens_k is None else [int(x) for x in cu_seqlens_k]
    if len(cu_q) != len(cu_k) or cu_q[-1] != q.shape[0] or cu_k[-1] != k.shape[0]:
        raise ValueError(
            f"cu_seqlens {cu_q} / {cu_k} do not cover q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    parts = []
    for s in range(len(cu_q) - 1):
        qs = q[cu_q[s] : cu_q[s + 1]].transpose(0, 1)[None]  # [1, H, L, D]
        ks = k[cu_k[s] : cu_k[s + 1]].transpose(0, 1)[None]
        vs = v[cu_k[s] : cu_k[s + 1]].transpose(0, 1)[None]
        parts.append(flash_attention(qs, ks, vs, **kwargs)[0].transpose(0, 1))
    return torch.cat(parts) if parts else q.new_empty(q.shape)
