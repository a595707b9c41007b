"""The lmforge language model: one decoder-only transformer, configured by `ModelConfig`.

    tokens → embed_tokens → N × [x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] → RMSNorm → lm_head

Module and parameter names are Hugging Face's (``model.layers.3.self_attn.q_proj.weight``),
so Llama / Qwen2 / Qwen3 / Mistral / DeepSeek-V3 checkpoints load by name, and PEFT target
names apply. DeepSeek-V3 is the same model with two switches of `ModelConfig`: multi-head
latent attention (`lmforge.nn.mla`) instead of GQA, and DeepSeekMoE (`lmforge.nn.moe`)
instead of the dense MLP after the first ``first_k_dense_replace`` layers.

Initialisation (trains well from scratch): every Linear and the embedding ~ N(0, σ²) with
σ = ``initializer_range``; the two projections that write into the residual stream
(``o_proj``, ``down_proj``) use σ / √(2·num_layers) so the residual variance stays O(1)
with depth (GPT-2, Radford et al. 2019, §2.3); biases are zero and norm gains one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmforge.config import ModelConfig
from lmforge.models.loss import IGNORE_INDEX, chunked_next_token_loss, next_token_loss
from lmforge.models.mtp import MTPModule, mtp_loss
from lmforge.nn.attention import Attention, AttentionBatch, LayerCache
from lmforge.nn.mla import MultiHeadLatentAttention, mla_softmax_scale
from lmforge.nn.mlp import SwiGLU
from lmforge.nn.moe import DeepSeekMoE, TopKRouter
from lmforge.nn.norm import RMSNorm
from lmforge.nn.rope import RotaryEmbedding


@dataclass
class CausalLMOutput:
    """``logits`` ``[B, T, V]`` (or the last ``logits_to_keep`` positions; None when the loss
    was computed in chunks); ``loss`` when labels were given (next-token cross-entropy over
    non-ignored labels: mean, or sum with ``loss_reduction="sum"``)."""

    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # MoE balance loss (α-weighted), included in ``loss``
    mtp_loss: torch.Tensor | None = None  # mean of the MTP depth losses (λ × it in ``loss``)
    hidden_states: torch.Tensor | None = None  # final normed ``[B, T, D]``, when asked for


def rotary_embedding(config: ModelConfig) -> RotaryEmbedding:
    """The model's RoPE tables (over ``rope_head_dim``: ``qk_rope_head_dim`` for MLA)."""
    return RotaryEmbedding(
        config.rope_head_dim,
        config.rope_theta,
        config.rope_scaling,
        config.max_position_embeddings,
    )


def attention_block(config: ModelConfig, layer_idx: int) -> nn.Module:
    """Layer ``layer_idx``'s attention: MLA when ``kv_lora_rank`` is set, else MHA/GQA."""
    c = config
    if c.use_mla:
        return MultiHeadLatentAttention(
            c.hidden_size,
            c.num_attention_heads,
            c.kv_lora_rank,
            c.qk_nope_head_dim,
            c.qk_rope_head_dim,
            c.v_head_dim,
            q_lora_rank=c.q_lora_rank,
            layer_idx=layer_idx,
            bias=c.qkv_bias,
            rope_interleave=c.rope_interleave,
            softmax_scale=mla_softmax_scale(
                c.qk_nope_head_dim + c.qk_rope_head_dim, c.rope_scaling
            ),
        )
    return Attention(
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        layer_idx=layer_idx,
        qkv_bias=c.qkv_bias,
        o_bias=c.o_bias,
        qk_norm=c.qk_norm,
        norm_eps=c.rms_norm_eps,
        window=c.layer_window(layer_idx),
    )


def mlp_block(config: ModelConfig, layer_idx: int) -> nn.Module:
    """Layer ``layer_idx``'s MLP: DeepSeekMoE from ``first_k_dense_replace`` on (when
    ``n_routed_experts`` is set), else the dense SwiGLU."""
    c = config
    if c.is_moe_layer(layer_idx):
        return DeepSeekMoE(
            c.hidden_size,
            c.moe_intermediate_size,
            c.n_routed_experts,
            c.num_experts_per_tok,
            n_shared_experts=c.n_shared_experts,
            n_group=c.n_group,
            topk_group=c.topk_group,
            norm_topk_prob=c.norm_topk_prob,
            routed_scaling_factor=c.routed_scaling_factor,
            aux_loss_alpha=c.aux_loss_alpha,
        )
    return SwiGLU(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then h + MLP(RMSNorm(h))."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        c = config
        self.self_attn = attention_block(c, layer_idx)
        self.mlp = mlp_block(c, layer_idx)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, batch: AttentionBatch, cache: LayerCache | None = None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class TransformerModel(nn.Module):
    """Embedding, decoder layers and final norm (HF's ``model.*`` submodule): the body every
    head shares. ``forward`` returns the final (normed) hidden states ``[B, T, H]``; the
    language-model head (`CausalLM`), a reward/value head (`lmforge.align.reward_model`) and
    later MTP / Medusa / vision-language heads all run on top of it."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = rotary_embedding(config)
        # Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
        # Cost"): 0 = off; k ≥ 1 = recompute every k-th block (0, k, 2k, ...) in backward
        # instead of storing its activations. Applies only in training with autograd on.
        self.gradient_checkpointing = 0

    def checkpointed(self, layer_idx: int) -> bool:
        """Whether block ``layer_idx`` is recomputed in backward (see `gradient_checkpointing`)."""
        k = self.gradient_checkpointing
        return bool(k) and self.training and torch.is_grad_enabled() and layer_idx % k == 0

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final hidden states ``[B, T, H]`` (after the last norm).

        Args:
            input_ids: ``[B, T]`` token ids — or give ``inputs_embeds`` ``[B, T, H]`` instead
                (vision-language models, prompt tuning): exactly one of the two.
            position_ids: ``[B, T]``; derived when omitted (reset per document when packed,
                from the padding mask when one is given, else consecutive after the cache).
            attention_mask: ``[B, past + T]`` 1 for real tokens, 0 for (left) padding.
            document_ids: ``[B, T]`` packed-document labels; tokens attend only within
                their document.
            cu_seqlens: alternative to ``document_ids``: int32 cumulative document lengths
                over the flattened ``B·T`` tokens (every row boundary must be one). Uses
                flash-attn varlen on GPU when installed.
            cache: a `KVCache` (or anything with ``update``/``advance``/``length``), or a
                paged batch (`lmforge.infer.cache.PagedBatch`, ``paged = True``).
        """
        x, cos, sin, batch = self.prepare(
            input_ids, position_ids, attention_mask, document_ids, cu_seqlens, cache, inputs_embeds
        )
        for i, layer in enumerate(self.layers):
            if self.checkpointed(i):
                x = checkpoint(layer, x, cos, sin, batch, cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, batch, cache)
        if cache is not None and not getattr(cache, "paged", False):
            cache.advance(batch.seq_len)
        return self.norm(x)

    def prepare(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionBatch]:
        """What every block of a forward shares (arguments as `forward`): the input
        embeddings ``[B, T, H]``, the RoPE tables and the `AttentionBatch`. Heads that run
        further blocks beside the body (the MTP modules) reuse them."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None and inputs_embeds.ndim != 3:
            raise ValueError(f"inputs_embeds must be [B, T, H], got {tuple(inputs_embeds.shape)}")
        b, t = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = (input_ids if input_ids is not None else inputs_embeds).device
        # A paged batch (lmforge.infer.cache.PagedBatch) is a flattened ragged batch [1, N]:
        # each token's position comes from position_ids; attention reads the paged cache.
        paged = getattr(cache, "paged", False)
        if paged and position_ids is None:
            raise ValueError("a paged KV cache needs explicit position_ids")
        past = cache.length if cache is not None and not paged else 0
        if cu_seqlens is not None:
            if document_ids is not None:
                raise ValueError("pass document_ids or cu_seqlens, not both")
            document_ids = _documents_from_cu_seqlens(cu_seqlens, b, t)
        if document_ids is not None and past:
            raise ValueError("packed documents cannot be combined with a non-empty KV cache")
        key_valid = None
        if attention_mask is not None:
            if attention_mask.shape != (b, past + t):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                    f"{(b, past + t)} (cached + new positions)"
                )
            if not bool(attention_mask.all()):
                key_valid = attention_mask.bool()
        if position_ids is None:
            position_ids = _position_ids(b, t, past, attention_mask, document_ids, device)

        batch = AttentionBatch(seq_len=t, past=past, key_valid=key_valid, doc_ids=document_ids)
        if cu_seqlens is not None:
            batch.cu_seqlens = cu_seqlens.to(torch.int32)
            batch.max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())

        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        return x, cos, sin, batch


def lm_output(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor | None = None,
    logits_to_keep: int | torch.Tensor = 0,
    loss_reduction: str = "mean",
    loss_chunk_size: int = 0,
) -> CausalLMOutput:
    """The language-model head on the body's hidden states: logits (of the kept positions)
    and, with ``labels``, the next-token loss — see `CausalLM.forward` for the arguments.
    Shared by `CausalLM` and every module that pairs the body with an LM head."""
    if isinstance(logits_to_keep, torch.Tensor):  # indices along T (as HF accepts)
        hidden = hidden[:, logits_to_keep]
    elif logits_to_keep:
        hidden = hidden[:, -logits_to_keep:]
    if labels is not None and loss_chunk_size:
        loss = chunked_next_token_loss(hidden, lm_head, labels, loss_chunk_size, loss_reduction)
        return CausalLMOutput(logits=None, loss=loss)
    logits = lm_head(hidden)
    loss = None if labels is None else next_token_loss(logits, labels, loss_reduction)
    return CausalLMOutput(logits=logits, loss=loss)


class CausalLM(nn.Module):
    """Decoder-only LM. ``forward`` returns a `CausalLMOutput`; see `forward` for inputs.

    With ``config.num_nextn_predict_layers`` = D > 0 the model has D multi-token-prediction
    modules ``mtp`` (`lmforge.models.mtp`), trained with the main loss; ``with_mtp=False``
    builds it without them (inference, or a checkpoint saved without them)."""

    def __init__(self, config: ModelConfig, with_mtp: bool = True) -> None:
        super().__init__()
        self.config = config
        # Defaults for generation (HF generation_config.json: eos ids, sampling settings).
        self.generation_config: dict = {}
        self.model = TransformerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        n = config.num_hidden_layers
        depths = range(config.num_nextn_predict_layers if with_mtp else 0)
        self.mtp = (
            nn.ModuleList(MTPModule(config, DecoderLayer(config, n + k)) for k in depths)
            if depths
            else None
        )
        if self.lm_head.weight.is_meta:  # built to be loaded into (load_model): nothing to draw
            self.tie_weights()
        else:
            self.reset_parameters()

    # ------------------------------------------------------------------ init
    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as described in the module docstring."""
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                s = residual_std if name.endswith(("o_proj", "down_proj")) else std
                nn.init.normal_(module.weight, mean=0.0, std=s)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, TopKRouter):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.e_score_correction_bias)
        self.tie_weights()

    def num_parameters(self, trainable_only: bool = False) -> int:
        params = {id(p): p for p in self.parameters() if p.requires_grad or not trainable_only}
        return sum(p.numel() for p in params.values())

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache=None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        loss_reduction: str = "mean",
        loss_chunk_size: int = 0,
        inputs_embeds: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Run the body (`TransformerModel.forward`: ``input_ids`` or ``inputs_embeds``,
        ``position_ids``, ``attention_mask``, ``document_ids`` / ``cu_seqlens``, ``cache``),
        then the head.

        Args:
            labels: ``[B, T]``; loss = mean CE of logits[:, t] vs labels[:, t+1], -100 ignored.
                In training mode, plus the MoE balance loss (``aux_loss_alpha`` > 0) and
                ``mtp_loss_weight`` × the MTP loss (when the model has MTP modules).
            logits_to_keep: if > 0, compute logits only for the last that many positions;
                a 1-D tensor keeps exactly those positions.
            loss_reduction: "mean" (default) or "sum" of the per-token losses.
            loss_chunk_size: with ``labels``, > 0 computes the loss ``loss_chunk_size``
                positions at a time without keeping the ``[B, T, V]`` logits
                (`lmforge.models.loss.chunked_next_token_loss`); ``logits`` is then None.
        """
        hidden = self.model(
            input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            document_ids=document_ids,
            cu_seqlens=cu_seqlens,
            cache=cache,
            inputs_embeds=inputs_embeds,
        )
        out = lm_output(
            hidden, self.lm_head, labels, logits_to_keep, loss_reduction, loss_chunk_size
        )
        if labels is not None and self.training:
            add_balance_loss(self.model, out, labels, loss_reduction)
            if self.mtp is not None and input_ids is not None:
                inputs = dict(
                    position_ids=position_ids,
                    attention_mask=attention_mask,
                    document_ids=document_ids,
                    cu_seqlens=cu_seqlens,
                )
                out.mtp_loss = mtp_loss(
                    self.mtp, self.model, self.lm_head, hidden, input_ids, labels, inputs
                )
                term = self.config.mtp_loss_weight * out.mtp_loss
                if loss_reduction == "sum":
                    term = term * (labels[:, 1:] != IGNORE_INDEX).sum()
                out.loss = out.loss + term.to(out.loss.dtype)
        return out


def moe_layers(model: nn.Module) -> list[DeepSeekMoE]:
    """Every `DeepSeekMoE` block of ``model`` (for the balancing step and the load stats)."""
    return [m for m in model.modules() if isinstance(m, DeepSeekMoE)]


def add_balance_loss(
    body: nn.Module, out: CausalLMOutput, labels: torch.Tensor, loss_reduction: str
) -> None:
    """Add the MoE layers' α-weighted sequence-wise balance losses (DeepSeek-V3 eq. 17) of
    the last forward to ``out.loss``. The loss is a per-batch mean, so with
    ``loss_reduction="sum"`` it is multiplied by the number of predicted tokens (the loop
    divides the sum by that count)."""
    terms = [m.aux_loss for m in moe_layers(body) if m.aux_loss is not None]
    if not terms:
        return
    aux = torch.stack(terms).sum()
    if loss_reduction == "sum":
        aux = aux * (labels[:, 1:] != IGNORE_INDEX).sum()
    out.aux_loss = aux if out.aux_loss is None else out.aux_loss + aux
    out.loss = out.loss + aux.to(out.loss.dtype)


def _documents_from_cu_seqlens(cu_seqlens: torch.Tensor, b: int, t: int) -> torch.Tensor:
    cu = cu_seqlens.to(torch.long)
    if cu.ndim != 1 or int(cu[0]) != 0 or int(cu[-1]) != b * t:
        raise ValueError(f"cu_seqlens must be 1-D, start at 0 and end at B*T={b * t}")
    if b > 1 and not bool(torch.isin(torch.arange(t, b * t, t, device=cu.device), cu).all()):
        raise ValueError("cu_seqlens must contain every row boundary (multiples of T)")
    flat = torch.arange(b * t, device=cu.device)
    return torch.searchsorted(cu[1:], flat, right=True).view(b, t)


def _position_ids(b, t, past, attention_mask, document_ids, device) -> torch.Tensor:
    if document_ids is not None:
        idx = torch.arange(t, device=device).expand(b, t)
        starts = torch.ones_like(document_ids, dtype=torch.bool)
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
        return idx - start_idx
    if attention_mask is not None:
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.clamp_min(0)[:, -t:]
    return torch.arange(past, past + t, device=device).expand(b, t)
