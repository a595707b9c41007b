"""Grouped-query self-attention (MHA / GQA / MQA) with RoPE, optional QK-norm, sliding
windows, packed documents and a KV cache.

Masks are built once per forward in `AttentionBatch` and shared by every layer. The
unmasked causal case calls `scaled_dot_product_attention(is_causal=True)` with no mask
tensor (the fastest path); packed batches use flash-attn's varlen kernel when it is
installed and the tensors are fp16/bf16 on a GPU, and a block-diagonal causal mask
otherwise. Opt-in (``LMFORGE_ATTENTION=triton``): lmforge's own Triton FlashAttention kernel
(`lmforge.nn.flash_attention_triton`) runs training and prefill batches on a CUDA GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.nn.norm import RMSNorm
from lmforge.nn.rope import apply_rotary

try:  # optional GPU kernel for packed (varlen) batches
    from flash_attn import flash_attn_varlen_func
except Exception:  # noqa: BLE001 - absent or built for another torch: fall back to SDPA
    flash_attn_varlen_func = None


class LayerCache(Protocol):
    """What attention needs from a KV cache: append this step's K/V, get all K/V back."""

    def update(
        self, layer_idx: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def attention_mask(
    q_slots: torch.Tensor,
    k_slots: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Boolean mask ``[B, 1, Tq, Tk]`` (True = may attend).

    A query at cache slot i sees key slot j iff j ≤ i, the key is not padding, both belong
    to the same document, and i − j < window. The diagonal is always allowed so that rows
    of padding queries never become all-masked (which would turn into NaN).
    """
    allowed = k_slots[None, :] <= q_slots[:, None]  # [Tq, Tk]
    if window is not None:
        allowed = allowed & (q_slots[:, None] - k_slots[None, :] < window)
    allowed = allowed[None, None]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :].bool()
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    diagonal = q_slots[:, None] == k_slots[None, :]
    return allowed | diagonal[None, None]


@dataclass
class AttentionBatch:
    """Per-forward attention context shared by all layers.

    ``key_valid`` ``[B, Tk]`` marks real (non-padding) key slots, ``doc_ids`` ``[B, T]``
    labels packed documents, ``past`` is the number of cached slots before this step.
    ``cu_seqlens`` (int32, cumulative document lengths of the flattened batch) enables
    flash-attn varlen on GPU.
    """

    seq_len: int
    past: int = 0
    key_valid: torch.Tensor | None = None
    doc_ids: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    _masks: dict = field(default_factory=dict, repr=False)
    # ``LMFORGE_ATTENTION=triton``, read once per forward (not once per layer)
    triton_requested: bool = field(
        default_factory=lambda: os.environ.get("LMFORGE_ATTENTION") == "triton", repr=False
    )

    def needs_mask(self, window: int | None) -> bool:
        total = self.past + self.seq_len
        window_bites = window is not None and window < total
        return (
            self.key_valid is not None
            or self.doc_ids is not None
            or window_bites
            or (self.past > 0 and self.seq_len > 1)
        )

    def mask(self, window: int | None, device: torch.device) -> torch.Tensor:
        if window not in self._masks:
            q = torch.arange(self.past, self.past + self.seq_len, device=device)
            k = torch.arange(self.past + self.seq_len, device=device)
            self._masks[window] = attention_mask(q, k, self.key_valid, self.doc_ids, window)
        return self._masks[window]

    def use_flash(self, x: torch.Tensor) -> bool:
        return (
            flash_attn_varlen_func is not None
            and self.cu_seqlens is not None
            and x.is_cuda
            and x.dtype in (torch.float16, torch.bfloat16)
            and self.past == 0
        )

    def use_triton(self, x: torch.Tensor, window: int | None) -> bool:
        """The opt-in Triton kernel (``LMFORGE_ATTENTION=triton``) for batches it covers:
        no cache offset, no padding, no biting window; packed only with ``cu_seqlens``."""
        if not self.triton_requested:
            return False
        if self.past or self.key_valid is not None:
            return False
        if window is not None and window < self.seq_len:
            return False
        if self.doc_ids is not None and self.cu_seqlens is None:
            return False
        from lmforge.nn.flash_attention_triton import triton_attention_enabled

        return triton_attention_enabled(x)


class Attention(nn.Module):
    """Multi-head attention with ``num_key_value_heads`` ≤ ``num_heads`` shared K/V heads
    (GQA, Ainslie et al. 2023); MHA and MQA are the two extremes.

    softmax(Q Kᵀ / √d + M) V with RoPE applied to Q and K (and Qwen3's per-head RMSNorm
    on Q and K before RoPE when ``qk_norm``).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        layer_idx: int = 0,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        window: int | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.layer_idx, self.window = layer_idx, window
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=o_bias)
        if qk_norm:
            self.q_norm = RMSNorm(head_dim, norm_eps)
            self.k_norm = RMSNorm(head_dim, norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        if getattr(cache, "paged", False):  # lmforge.infer.cache.PagedBatch: ragged [1, N]
            out = cache.attention(self.layer_idx, q, k, v, self.window)
            return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)

        if batch.use_flash(q):
            out = self._flash_varlen(q, k, v, batch)
        elif batch.use_triton(q, self.window):
            out = self._triton(q, k, v, batch)
        else:
            out = self._sdpa(q, k, v, batch)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _sdpa(self, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        groups = self.num_heads // self.num_kv_heads
        if not batch.needs_mask(self.window):
            # No padding, no documents, no cache offset: plain causal (or one query: all
            # keys). SDPA shares K/V heads itself (no copies) on this path.
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=q.shape[2] > 1, enable_gqa=groups > 1
            )
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        mask = batch.mask(self.window, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _triton(self, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        from lmforge.nn import flash_attention_triton as kernel

        if batch.cu_seqlens is None:
            return kernel.triton_flash_attention(q, k, v)
        b, h, t, d = q.shape
        flat = lambda z: z.transpose(1, 2).reshape(b * t, z.shape[1], d)  # noqa: E731
        out = kernel.triton_flash_attention_varlen(
            flat(q), flat(k), flat(v), batch.cu_seqlens, batch.max_seqlen
        )
        return out.view(b, t, h, d).transpose(1, 2)

    def _flash_varlen(self, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        b, h, t, d = q.shape
        window = (self.window - 1, 0) if self.window is not None else (-1, -1)
        flat = lambda z: z.transpose(1, 2).reshape(b * t, z.shape[1], d)  # noqa: E731
        out = flash_attn_varlen_func(
            flat(q),
            flat(k),
            flat(v),
            batch.cu_seqlens,
            batch.cu_seqlens,
            batch.max_seqlen,
            batch.max_seqlen,
            causal=True,
            window_size=window,
        )
        return out.view(b, t, h, d).transpose(1, 2)
