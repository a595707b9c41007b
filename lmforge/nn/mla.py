"""Multi-head latent attention (MLA; DeepSeek-V2, arXiv:2405.04434 §2.1; DeepSeek-V3 §2.1.1).

Keys and values are compressed jointly into one latent per token, eq. (9)-(11) of V2:

    c_KV = RMSNorm(W_DKV h)               [kv_lora_rank]
    k_C  = W_UK c_KV,  v_C = W_UV c_KV     per head: [qk_nope_head_dim], [v_head_dim]
    k_R  = RoPE(W_KR h)                    [qk_rope_head_dim], shared by all heads (eq. 15)

(``kv_a_proj_with_mqa`` is ``[W_DKV; W_KR]``, ``kv_b_proj`` is ``[W_UK; W_UV]`` head by head.)
The query is optionally low-rank too (eq. 12-13: ``q_a_proj`` → RMSNorm → ``q_b_proj``;
``q_lora_rank=None`` is one plain ``q_proj``, as DeepSeek-V2-Lite), split per head into
``q_C`` and ``q_R = RoPE(…)``; a head's score is (q_C·k_C + q_R·k_R) · scale (eq. 16-17).

Two forms compute the same function:

* **training form** — expand every latent to per-head keys and values and attend as MHA;
* **absorbed form** (V2 §2.1.2, "W_UK can be absorbed into W_Q, and W_UV into W_O"):
  q_C·(W_UK c) = (W_UKᵀ q_C)·c, so each head's query is moved into latent space and attends
  directly over the cached ``[c_KV ; k_R]``; the result, still a latent, is mapped by W_UV.
  The cache then holds only ``kv_lora_rank + qk_rope_head_dim`` numbers per token and
  layer — it is MQA with one shared "head" of that width whose value is its first
  ``kv_lora_rank`` dims, which is how the paged engine stores it.

``form="auto"`` uses the absorbed form for decoding (a cache holding earlier tokens, or one
new token) and the training form otherwise (training, and a prompt's first prefill, where
expanding T latents once is cheaper than attending T × T in the wider latent space).
RoPE is DeepSeek's interleaved layout when ``rope_interleave`` (pairs (x0, x1), (x2, x3) …
rotate together: de-interleave, then the half-split rotation). With YaRN, the softmax scale
is multiplied by mscale(s, ``mscale_all_dim``)² (`mla_softmax_scale`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.nn.attention import AttentionBatch, LayerCache
from lmforge.nn.norm import RMSNorm
from lmforge.nn.rope import rotate

FORMS = ("auto", "training", "absorbed")
# transformers' and DeepSeek's q_a_layernorm / kv_a_layernorm use the default eps, not
# rms_norm_eps.
LATENT_NORM_EPS = 1e-6


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature factor 0.1·m·ln(s) + 1 (arXiv:2309.00071 eq. 22)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def mla_softmax_scale(qk_head_dim: int, rope_scaling: dict[str, Any] | None) -> float:
    """1/√d_qk, times mscale(factor, mscale_all_dim)² when a scaled RoPE sets
    ``mscale_all_dim`` (DeepSeek-V2's YaRN: the temperature applies to the whole score, not
    only to the rotated dims)."""
    scale = qk_head_dim**-0.5
    p = rope_scaling or {}
    if p.get("rope_type", p.get("type", "default")) != "default" and p.get("mscale_all_dim"):
        m = yarn_mscale(p["factor"], p["mscale_all_dim"])
        scale *= m * m
    return scale


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, …) → (x0, x2, …, x1, x3, …): DeepSeek's interleaved RoPE pairs in
    the half-split order `rotate` expects."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


class MultiHeadLatentAttention(nn.Module):
    """MLA with the parameter names of DeepSeek-V3 / transformers (see module docstring)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        q_lora_rank: int | None = None,
        layer_idx: int = 0,
        bias: bool = False,
        rope_interleave: bool = True,
        softmax_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.layer_idx = num_heads, layer_idx
        self.kv_lora_rank, self.q_lora_rank = kv_lora_rank, q_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.rope_interleave = rope_interleave
        qk = qk_nope_head_dim + qk_rope_head_dim
        self.scale = softmax_scale if softmax_scale is not None else qk**-0.5
        self.form = "auto"  # "training" | "absorbed" | "auto" (see module docstring)
        self.window = None  # MLA models have no sliding window (the paged engine asks)
        if q_lora_rank is None:
            self.q_proj = nn.Linear(hidden_size, num_heads * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden_size, q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(q_lora_rank, num_heads * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden_size, kv_lora_rank + qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(
            kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(num_heads * v_head_dim, hidden_size, bias=bias)

    @property
    def latent_dim(self) -> int:
        """Numbers cached per token: the latent c_KV and the shared rotated key k_R."""
        return self.kv_lora_rank + self.rope_dim

    # ------------------------------------------------------------------ pieces
    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return rotate(deinterleave(x) if self.rope_interleave else x, cos, sin)

    def queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """(q_C ``[B, H, T, nope]``, RoPE'd q_R ``[B, H, T, rope]``) of hidden states x."""
        b, t, _ = x.shape
        if self.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, t, self.num_heads, self.nope_dim + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        return q_nope, self._rope(q_rope, cos[:, None], sin[:, None])

    def latents(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """What the cache holds: ``[c_KV ; k_R]`` ``[B, 1, T, kv_lora_rank + rope]``."""
        c_kv, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], -1)
        k_rope = self._rope(k_rope[:, None], cos[:, None], sin[:, None])
        return torch.cat((self.kv_a_layernorm(c_kv)[:, None], k_rope), dim=-1)

    def absorbed_weights(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK ``[r, H, nope]`` and W_UV ``[r, H, v]`` as ``kv_b_proj`` computes them.

        For a plain bias-free ``nn.Linear`` they are views of its current weight (``x W^T``
        with x = I is W^T): nothing is cached, so a ``p.data`` write or a fused optimizer's
        in-place step is seen at the next call. Any other projection (an adapter, an FP8
        layer) is applied to the identity, so what it adds is included."""
        proj = self.kv_b_proj
        if type(proj) is nn.Linear and proj.bias is None:
            w = proj.weight.t().to(like.dtype).view(self.kv_lora_rank, self.num_heads, -1)
        else:
            eye = torch.eye(self.kv_lora_rank, dtype=like.dtype, device=like.device)
            w = proj(eye).view(self.kv_lora_rank, self.num_heads, -1)
        return w[..., : self.nope_dim], w[..., self.nope_dim :]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q_nope, q_rope = self.queries(x, cos, sin)
        latent = self.latents(x, cos, sin)
        if getattr(cache, "paged", False):  # lmforge.infer.cache.PagedBatch: ragged [1, N]
            out = self._paged(q_nope, q_rope, latent, cache)
        else:
            if cache is not None:  # only the latent is cached (the value slot is empty)
                latent, _ = cache.update(self.layer_idx, latent, latent[..., :0])
            decoding = cache is not None and (t == 1 or batch.past > 0)
            absorbed = self.form == "absorbed" or (self.form == "auto" and decoding)
            attend = self._absorbed if absorbed else self._expanded
            out = attend(q_nope, q_rope, latent, batch)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.v_dim))

    def _sdpa(self, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        gqa = q.shape[1] != k.shape[1]
        if not batch.needs_mask(None):
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=q.shape[2] > 1, scale=self.scale, enable_gqa=gqa
            )
        mask = batch.mask(None, q.device)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa
        )

    def _expanded(self, q_nope, q_rope, latent, batch: AttentionBatch) -> torch.Tensor:
        """Training form: per-head keys [k_C ; k_R] and values from every latent."""
        b, _, s, _ = latent.shape
        c_kv, k_rope = latent.split([self.kv_lora_rank, self.rope_dim], dim=-1)
        kv = self.kv_b_proj(c_kv[:, 0]).view(b, s, self.num_heads, self.nope_dim + self.v_dim)
        k_nope, v = kv.transpose(1, 2).split([self.nope_dim, self.v_dim], dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, self.num_heads, -1, -1)), dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)
        return self._sdpa(q, k, v, batch)

    def _absorbed_query(self, q_nope, q_rope) -> tuple[torch.Tensor, torch.Tensor]:
        w_uk, w_uv = self.absorbed_weights(q_nope)
        q_latent = torch.einsum("bhtd,rhd->bhtr", q_nope, w_uk)
        return torch.cat((q_latent, q_rope), dim=-1), w_uv

    def _absorbed(self, q_nope, q_rope, latent, batch: AttentionBatch) -> torch.Tensor:
        """Absorbed form: attend in latent space over ``[c_KV ; k_R]`` (one shared head).

        The heads are folded into the query rows (``[B, 1, H·T, D]``): with one K/V head
        that is two plain GEMMs, and the value is the whole latent (its first
        ``kv_lora_rank`` dims are kept) — measured ≈20× faster on CPU at 8k context than
        SDPA's GQA path with a narrower value."""
        q, w_uv = self._absorbed_query(q_nope, q_rope)
        b, h, t, d = q.shape
        if batch.needs_mask(None):
            mask = batch.mask(None, q.device).repeat(1, 1, h, 1)  # row h·T + t → mask row t
        elif t > 1:  # plain causal, no cache offset
            mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril().repeat(h, 1)
        else:
            mask = None
        out = F.scaled_dot_product_attention(
            q.reshape(b, 1, h * t, d), latent, latent, attn_mask=mask, scale=self.scale
        )
        out_latent = out.view(b, h, t, d)[..., : self.kv_lora_rank]
        return torch.einsum("bhtr,rhv->bhtv", out_latent, w_uv)

    def _paged(self, q_nope, q_rope, latent, cache) -> torch.Tensor:
        """The absorbed form over the engine's paged cache: one KV "head" of width
        ``latent_dim`` whose value is the latent itself (SDPA scales by 1/√latent_dim, so
        the query is rescaled to this module's scale)."""
        q, w_uv = self._absorbed_query(q_nope, q_rope)
        q = q * (self.scale * math.sqrt(self.latent_dim))
        out = cache.attention(self.layer_idx, q, latent, latent, None)
        return torch.einsum("bhtr,rhv->bhtv", out[..., : self.kv_lora_rank], w_uv)
