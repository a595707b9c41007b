"""EAGLE drafter (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty", arXiv:2401.15077): a one-layer autoregressive model over the target's
*features* (its last hidden states), read out by the target's own LM head.

§4.1: at position i the drafter sees the feature f_i and the embedding of the token that was
sampled after it, e_{i+1} (the "shifted token", which removes the feature's uncertainty):

    g_i     = FC([e_{i+1} ; f_i])                     (2H → H)
    f̂_{i+1} = DecoderLayer(g_{≤i})_i                  (causal self-attention over the past)
    p̂_{i+2} = softmax(LMHead(f̂_{i+1}))

Drafting feeds f̂ back as the next feature. §4.2 training on the target's own features:
L = L_reg + w_cls · L_cls with L_reg = SmoothL1(f_{i+1}, f̂_{i+1}) and
L_cls = CE(p_{i+2}, p̂_{i+2}) (the target's distribution p from LMHead(f_{i+1}) as soft
labels), w_cls = 0.1.

The layer is self-contained (its own attention taking an explicit mask and past K/V) so that
tree drafts can attend their ancestors only; the embedding and LM head are the target's and
are not parameters here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.io import atomic_path, atomic_write_json, read_json
from lmforge.nn.mlp import SwiGLU
from lmforge.nn.norm import RMSNorm
from lmforge.nn.rope import RotaryEmbedding, rotate

__all__ = ["EAGLE_CONFIG", "EAGLE_WEIGHTS", "EagleLayer", "eagle_loss", "load_eagle_layer",
           "save_eagle_layer"]  # fmt: skip

EAGLE_CONFIG = "eagle_config.json"
EAGLE_WEIGHTS = "eagle.safetensors"


class EagleLayer(nn.Module):
    """FC over [embedding ; feature] and one pre-norm decoder block (GQA attention, SwiGLU).

    ``forward(embeds, features, positions, past=None, mask=None)`` with ``embeds`` /
    ``features`` ``[B, T, H]``, ``positions`` ``[T]`` (or ``[B, T]``, one row each),
    ``past`` ``(k, v)`` each ``[B, H_kv, P, D]`` and ``mask`` ``[T, P + T]`` (or
    ``[B, 1, T, P + T]``) bool (None: causal). Returns the predicted
    features ``[B, T, H]`` and this call's ``(k, v)`` ``[B, H_kv, T, D]``."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        intermediate_size: int,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads or num_heads % num_kv_heads:
            raise ValueError(f"EagleLayer: hidden_size={hidden_size}, num_heads={num_heads}, "
                             f"num_kv_heads={num_kv_heads} do not divide")  # fmt: skip
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.intermediate_size, self.rope_theta = intermediate_size, rope_theta
        self.max_position_embeddings, self.eps = max_position_embeddings, eps
        d = self.head_dim
        self.fc = nn.Linear(2 * hidden_size, hidden_size)
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.q_proj = nn.Linear(hidden_size, num_heads * d, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(num_heads * d, hidden_size, bias=False)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)
        self.mlp = SwiGLU(hidden_size, intermediate_size)
        self.rotary_emb = RotaryEmbedding(d, rope_theta, None, max_position_embeddings)

    @classmethod
    def for_model(cls, config) -> EagleLayer:
        """A layer shaped like one of the target's (a `ModelConfig`); MLA targets get
        plain GQA heads of ``hidden_size // num_attention_heads``."""
        kv = config.num_key_value_heads if not config.use_mla else config.num_attention_heads
        return cls(config.hidden_size, config.num_attention_heads, kv, config.intermediate_size,
                   config.rope_theta, config.max_position_embeddings, config.rms_norm_eps)  # fmt: skip

    def config_dict(self) -> dict:
        names = ("hidden_size", "num_heads", "num_kv_heads", "intermediate_size", "rope_theta",
                 "max_position_embeddings", "eps")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def forward(
        self,
        embeds: torch.Tensor,
        features: torch.Tensor,
        positions: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, _ = embeds.shape
        h, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        x = self.fc(torch.cat([embeds, features], dim=-1))
        y = self.input_layernorm(x)
        rows = positions if positions.dim() == 2 else positions[None]  # [B or 1, T]
        cos, sin = self.rotary_emb(rows, x.dtype)  # [B or 1, T, D]
        q = rotate(self.q_proj(y).view(b, t, h, d).transpose(1, 2), cos[:, None], sin[:, None])
        k = rotate(self.k_proj(y).view(b, t, hkv, d).transpose(1, 2), cos[:, None], sin[:, None])
        v = self.v_proj(y).view(b, t, hkv, d).transpose(1, 2)
        new = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if mask is None and past is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=h != hkv)
        else:
            if mask is None:
                p = k.shape[2] - t
                mask = (
                    torch.arange(p + t, device=x.device)[None]
                    <= p + torch.arange(t, device=x.device)[:, None]
                )
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=h != hkv)
        x = x + self.o_proj(out.transpose(1, 2).reshape(b, t, h * d))
        return x + self.mlp(self.post_attention_layernorm(x)), new


def eagle_loss(
    predicted: torch.Tensor,
    target_features: torch.Tensor,
    lm_head: nn.Module,
    valid: torch.Tensor,
    cls_weight: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EAGLE §4.2: (L_reg + w_cls · L_cls, L_reg, L_cls), means over ``valid`` positions.

    ``predicted`` f̂_{i+1} and ``target_features`` f_{i+1} are ``[B, T, H]`` (aligned: entry
    i of both is position i + 1's feature); ``valid`` ``[B, T]`` bool."""
    n = valid.sum().clamp_min(1)
    reg = F.smooth_l1_loss(predicted.float(), target_features.float(), reduction="none").mean(-1)
    with torch.no_grad():
        p = lm_head(target_features).float().softmax(-1)
    log_q = lm_head(predicted).float().log_softmax(-1)
    cls = -(p * log_q).sum(-1)
    reg, cls = (reg * valid).sum() / n, (cls * valid).sum() / n
    return reg + cls_weight * cls, reg, cls


def save_eagle_layer(layer: EagleLayer, folder: str | os.PathLike) -> Path:
    """``folder/eagle_config.json`` and ``folder/eagle.safetensors`` (atomic writes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in layer.state_dict().items()
             if not k.startswith("rotary_emb.")}  # fmt: skip
    with atomic_path(folder / EAGLE_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(folder / EAGLE_CONFIG, layer.config_dict())
    return folder


def load_eagle_layer(folder: str | os.PathLike) -> EagleLayer:
    """A layer saved by `save_eagle_layer`."""
    folder = Path(folder)
    layer = EagleLayer(**read_json(folder / EAGLE_CONFIG, "EAGLE layer config"))
    layer.load_state_dict(load_file(str(folder / EAGLE_WEIGHTS)))
    return layer.eval()
