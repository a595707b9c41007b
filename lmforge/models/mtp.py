"""Multi-token prediction (DeepSeek-V3, arXiv:2412.19437 §2.2): D sequential modules that
each predict one more token ahead, sharing the embedding and the output head with the model.

Depth k (k = 1 … D) at position i, eq. (21)-(23):

    h'_i^k = M_k [RMSNorm(Emb(t_{i+k})) ; RMSNorm(h_i^{k-1})]      (``eh_proj`` = M_k)
    h_i^k  = RMSNorm(TRM_k(h'_i^k))                                 (one decoder block)
    P^k_{i+k+1} = OutHead(h_i^k)

with h^0 the main model's final (normed) hidden states. The concatenation order (embedding
first) and the norm after the block (``shared_head.norm``, whose output also feeds depth k+1)
are DeepSeek-V3's checkpoint layout as transformers' ``MtpLayer`` and vLLM run it. The
training loss, eq. (24)-(25), is L_main + λ · mean_k L_MTP^k with λ = ``mtp_loss_weight``.

In the HF format each module is an extra layer after the last decoder layer:
``model.layers.{N + k - 1}.{enorm, hnorm, eh_proj, shared_head.norm, self_attn.*, mlp.*, …}``
(`lmforge.models.hf` maps the names; here they are ``mtp.{k-1}.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.models.loss import IGNORE_INDEX, next_token_loss
from lmforge.nn.attention import AttentionBatch
from lmforge.nn.norm import RMSNorm


class SharedHead(nn.Module):
    """DeepSeek's ``shared_head``: the module's final norm (the head itself is the model's
    ``lm_head``, shared, so it is not a parameter here)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(hidden_size, eps)


class MTPModule(nn.Module):
    """One prediction depth: norms, the ``[2H → H]`` projection, a decoder ``block`` (built
    by the caller, a `DecoderLayer` of the model's own kind), the final norm."""

    def __init__(self, config: ModelConfig, block: nn.Module) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.enorm = RMSNorm(h, eps)
        self.hnorm = RMSNorm(h, eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.block = block
        self.shared_head = SharedHead(h, eps)

    def forward(
        self,
        previous_hidden: torch.Tensor,
        next_embeds: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
    ) -> torch.Tensor:
        """h^k ``[B, T, H]`` from h^{k-1} and the embeddings of the tokens k ahead."""
        x = self.eh_proj(torch.cat((self.enorm(next_embeds), self.hnorm(previous_hidden)), -1))
        return self.shared_head.norm(self.block(x, cos, sin, batch, None))


def shift_left(x: torch.Tensor, k: int, fill: int | float = 0) -> torch.Tensor:
    """``x[:, i + k]`` at position i, ``fill`` past the end (dimension 1)."""
    pad = [0, 0] * (x.ndim - 2) + [0, k]
    return F.pad(x[:, k:], pad, value=fill)


def mtp_targets(labels: torch.Tensor, k: int, doc_ids: torch.Tensor | None) -> torch.Tensor:
    """Labels for depth k in `next_token_loss`'s convention (position i is scored against
    entry i + 1): ``labels[:, j + k]`` at j, -100 where the target lies in another packed
    document than the predicting position or past the end."""
    targets = shift_left(labels, k, IGNORE_INDEX)
    if doc_ids is not None and k:
        # entry j scores position j - 1, whose target is token j + k: same document?
        same = torch.ones_like(targets, dtype=torch.bool)
        same[:, 1:] = doc_ids[:, :-1] == shift_left(doc_ids, k, -1)[:, 1:]
        targets = targets.masked_fill(~same, IGNORE_INDEX)
    return targets


def mtp_hidden_states(
    modules: nn.ModuleList,
    embed_tokens: nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    batch: AttentionBatch,
) -> list[torch.Tensor]:
    """[h^1, …, h^D] over all T positions (positions whose look-ahead token is past the end
    see filler embeddings; their targets are ignored, and causal attention keeps them
    from earlier positions)."""
    out, previous = [], hidden
    for k, module in enumerate(modules, start=1):
        previous = module(previous, embed_tokens(shift_left(input_ids, k)), cos, sin, batch)
        out.append(previous)
    return out


def mtp_loss(
    modules: nn.ModuleList,
    body: nn.Module,
    lm_head: nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    model_inputs: dict,
) -> torch.Tensor:
    """mean_k L_MTP^k, eq. (24)-(25) (each depth's mean cross-entropy). ``body`` is the
    `TransformerModel` (its `prepare` gives the shared RoPE tables and masks) and
    ``model_inputs`` the forward's position / mask / document arguments."""
    _, cos, sin, batch = body.prepare(input_ids, **model_inputs)
    losses = []
    states = mtp_hidden_states(modules, body.embed_tokens, hidden, input_ids, cos, sin, batch)
    for k, h in enumerate(states, start=1):
        targets = mtp_targets(labels, k, batch.doc_ids)
        losses.append(next_token_loss(lm_head(h), targets))
    return torch.stack(losses).mean()
