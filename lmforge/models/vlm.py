"""Vision-language models: a vision encoder whose merged image tokens replace the image
placeholder tokens of the text, then any lmforge language-model body (via
``inputs_embeds``) and the LM head.

    input_ids ──embed──┐
                       ├─ placeholders (config.image_token_id) ← VisionEncoder(pixels) ─→ body → lm_head
    pixel_values ──────┘

Qwen2-VL (Wang et al. 2024, arXiv:2409.12191) and Kimi-VL (Kimi team 2025, arXiv:2504.07491)
are two configurations of this one module: Qwen2-VL = Qwen2 body + M-RoPE positions
(§2.1: image tokens get (t, h, w) ids, text continues after the image's largest id);
Kimi-VL = DeepSeek-V3 (MLA + MoE) body + MoonViT encoder + plain 1-D positions.
Module names are Qwen2-VL's (``visual.*``, ``model.*``, ``lm_head``), so its checkpoints
load by name (`lmforge.models.vlm_hf`). With ``VLMConfig.pointer_size`` > 0 the model also
points (`lmforge.models.pointer_head`, GUI-Actor): `pointer_logits` / `point` turn a query
token's hidden state into a distribution over an image's tokens.

This file is long because the placement of image tokens (spans, M-RoPE ids) and the model's
forward, pointing and generation belong to one module that users read together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmforge.config import ConfigError, ModelConfig
from lmforge.models.kv_cache import KVCache
from lmforge.models.pointer_head import PointerHead, image_keys
from lmforge.models.transformer import (
    CausalLMOutput,
    TransformerModel,
    add_balance_loss,
    lm_output,
    rotary_embedding,
)
from lmforge.models.vision_encoder import VisionConfig, VisionEncoder
from lmforge.nn.norm import RMSNorm
from lmforge.nn.rope import MultimodalRotaryEmbedding

POSITION_MODES = ("mrope", "1d")


@dataclass
class VLMConfig:
    """A vision-language model: the language model's `ModelConfig`, the encoder's
    `VisionConfig`, the special token ids and the position scheme (``mrope`` with
    ``mrope_section`` bands of ``head_dim/2``, or ``1d``)."""

    text: ModelConfig
    vision: VisionConfig
    image_token_id: int
    vision_start_token_id: int | None = None
    vision_end_token_id: int | None = None
    video_token_id: int | None = None
    positions: str = "mrope"
    mrope_section: list[int] | None = None
    model_type: str = "qwen2_vl"
    pointer_size: int = 0  # > 0: a `PointerHead` of this width (grounding by pointing)
    hf_extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        errors = []
        if self.positions not in POSITION_MODES:
            errors.append(f"positions={self.positions!r} (allowed: {POSITION_MODES})")
        if self.positions == "mrope":
            half = self.text.rope_head_dim // 2
            sec = self.mrope_section
            if sec is None or len(sec) != 3 or sum(sec) != half:
                errors.append(f"mrope_section={sec} must be 3 bands summing to head_dim/2={half}")
            if self.text.use_mla:
                errors.append("M-RoPE needs a GQA/MHA language model (use positions='1d' with MLA)")
        if self.vision.out_hidden_size != self.text.hidden_size:
            errors.append(
                f"vision.out_hidden_size={self.vision.out_hidden_size} must equal the language "
                f"model's hidden_size={self.text.hidden_size}"
            )
        if not 0 <= self.image_token_id < self.text.vocab_size:
            errors.append(f"image_token_id={self.image_token_id} outside the vocabulary")
        if self.pointer_size < 0:
            errors.append(f"pointer_size={self.pointer_size} must be ≥ 0 (0: no pointer head)")
        if errors:
            raise ConfigError("invalid VLMConfig: " + "; ".join(errors))

    # The language-model fields the generic tooling (KV cache, info) reads off ``config``.
    def __getattr__(self, name: str):
        if name in ("text", "__setstate__") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.text, name)


# ---------------------------------------------------------------------- image placement
def image_token_spans(
    input_ids: torch.Tensor, image_token_id: int, tokens_per_image: list[int]
) -> list[tuple[int, int, int]]:
    """(row, start, length) of each image's placeholder run, in reading order (row by row,
    left to right), checked against the images' token counts; a clear `ValueError` when
    placeholders and images disagree."""
    spans, k = [], 0
    for row, ids in enumerate(input_ids.tolist()):
        p = 0
        while p < len(ids):
            if ids[p] != image_token_id:
                p += 1
                continue
            if k >= len(tokens_per_image):
                raise ValueError(
                    f"more image placeholder tokens (id {image_token_id}) than images: row {row} "
                    f"position {p} has no image left ({len(tokens_per_image)} given)"
                )
            n = tokens_per_image[k]
            if ids[p : p + n] != [image_token_id] * n:
                rest = ids[p:] + [None]
                run = next(i for i, tok in enumerate(rest) if tok != image_token_id)
                raise ValueError(
                    f"image {k} needs {n} placeholder tokens but row {row} has a run of {run} "
                    f"at position {p} (one placeholder per merged image token)"
                )
            spans.append((row, p, n))
            p += n
            k += 1
    if k != len(tokens_per_image):
        raise ValueError(
            f"{len(tokens_per_image)} images but placeholders for only {k} "
            f"(image token id {image_token_id})"
        )
    return spans


def mrope_position_ids(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    image_token_id: int,
    merge: int,
    attention_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE position ids ``[3, B, T]`` and each row's delta ``[B]`` (next position −
    length, for decoding after the prompt).

    Text tokens take the same id on all three axes, counting on from the last one; an
    image of ``t × h × w`` merged tokens starting at text position s gets (s + t', s + h',
    s + w') for its token at (t', h', w'), and the text after it resumes at
    s + max(h, w) (Qwen2-VL §2.1). Padding (``attention_mask`` 0) gets id 0 and is
    skipped; positions restart at every packed document (``document_ids``)."""
    b, t = input_ids.shape
    grids = [] if image_grid_thw is None else image_grid_thw.tolist()
    counts = [gt * (gh // merge) * (gw // merge) for gt, gh, gw in grids]
    spans = image_token_spans(input_ids, image_token_id, counts)
    starts = {(row, p): k for k, (row, p, _) in enumerate(spans)}
    out = torch.zeros(3, b, t, dtype=torch.long)
    deltas = torch.zeros(b, dtype=torch.long)
    valid = None if attention_mask is None else attention_mask[:, -t:].bool().tolist()
    docs = None if document_ids is None else document_ids.tolist()
    for row in range(b):
        current, p, doc, last = 0, 0, None, 0
        while p < t:
            if valid is not None and not valid[row][p]:
                p += 1
                continue
            if docs is not None and docs[row][p] != doc:
                doc, current = docs[row][p], 0
            k = starts.get((row, p))
            if k is None:
                out[:, row, p] = current
                last, current, p = current, current + 1, p + 1
                continue
            gt, gh, gw = grids[k]
            ht, hh, ww = torch.meshgrid(
                torch.arange(gt),
                torch.arange(gh // merge),
                torch.arange(gw // merge),
                indexing="ij",
            )
            block = torch.stack([ht, hh, ww]).reshape(3, -1) + current
            out[:, row, p : p + block.shape[1]] = block
            last = int(block.max())
            current += max(gh, gw) // merge
            p += block.shape[1]
        n_valid = t if valid is None else sum(valid[row])
        deltas[row] = last + 1 - n_valid
    return out.to(input_ids.device), deltas.to(input_ids.device)


def language_rotary(config: VLMConfig) -> nn.Module:
    """The language model's RoPE tables: M-RoPE (`MultimodalRotaryEmbedding`) or the
    body's own 1-D ones."""
    t = config.text
    if config.positions != "mrope":
        return rotary_embedding(t)
    return MultimodalRotaryEmbedding(
        t.head_dim, config.mrope_section, t.rope_theta, t.rope_scaling, t.max_position_embeddings
    )


# ---------------------------------------------------------------------- the model
class VisionLanguageModel(nn.Module):
    """``forward(input_ids, pixel_values, image_grid_thw, …)`` → `CausalLMOutput`;
    ``generate(input_ids, pixel_values=…, image_grid_thw=…, max_new_tokens=N)`` → prompt +
    new tokens. Image positions are the ``config.image_token_id`` placeholders."""

    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        self.config = config
        self.generation_config: dict = {}
        self.visual = VisionEncoder(config.vision)
        self.model = TransformerModel(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        self.model.rotary_emb = language_rotary(config)
        self.rope_deltas: torch.Tensor | None = None
        self.pointer_head = (
            PointerHead(config.text.hidden_size, config.pointer_size)
            if config.pointer_size
            else None
        )
        if self.lm_head.weight.is_meta:
            self.tie_weights()
        else:
            self.reset_parameters()

    def tie_weights(self) -> None:
        if self.config.text.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The language model as `CausalLM.reset_parameters`; the encoder N(0, σ²)."""
        std = self.config.text.initializer_range
        residual_std = std / math.sqrt(2 * self.config.text.num_hidden_layers)
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Linear):
                s = residual_std if name.endswith(("o_proj", "down_proj")) else std
                nn.init.normal_(module.weight, std=s)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif hasattr(module, "e_score_correction_bias"):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.e_score_correction_bias)
        nn.init.normal_(self.lm_head.weight, std=std)
        self.visual.reset_parameters()
        self.tie_weights()

    def num_parameters(self, trainable_only: bool = False) -> int:
        params = {id(p): p for p in self.parameters() if p.requires_grad or not trainable_only}
        return sum(p.numel() for p in params.values())

    # ------------------------------------------------------------------ inputs
    def image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor):
        """Merged image tokens ``[Σ tokens, hidden]`` of all images, in order (the vision
        part of a forward: computed once per request by an engine)."""
        return self.visual(pixel_values, image_grid_thw)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the image placeholders replaced by the image tokens."""
        x = self.model.embed_tokens(input_ids)
        if image_features is None and pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values needs image_grid_thw ([num_images, 3])")
            image_features = self.image_features(pixel_values, image_grid_thw)
        is_image = input_ids == self.config.image_token_id
        n_slots = int(is_image.sum())
        if image_features is None:
            if n_slots:
                raise ValueError(
                    f"input_ids has {n_slots} image placeholder tokens "
                    f"(id {self.config.image_token_id}) but no pixel_values were given"
                )
            return x
        if image_grid_thw is not None:  # names the offending image when counts disagree
            image_token_spans(input_ids, self.config.image_token_id,
                              self.visual.tokens_per_image(image_grid_thw))  # fmt: skip
        if n_slots != image_features.shape[0]:
            raise ValueError(
                f"{image_features.shape[0]} image tokens but {n_slots} placeholders in input_ids"
            )
        return x.masked_scatter(is_image[..., None], image_features.to(x.dtype))

    def position_ids(
        self,
        input_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """M-RoPE ids ``[3, B, T]`` for a prompt (remembering the decode deltas), or None
        (1-D positions: the body derives them)."""
        if self.config.positions != "mrope":
            return None
        pos, self.rope_deltas = mrope_position_ids(
            input_ids, image_grid_thw, self.config.image_token_id,
            self.config.vision.spatial_merge_size, attention_mask, document_ids,
        )  # fmt: skip
        return pos

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache=None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        loss_reduction: str = "mean",
        loss_chunk_size: int = 0,
        image_features: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> CausalLMOutput:
        """Logits (and the next-token loss with ``labels``) of a multimodal batch.

        Args:
            input_ids: ``[B, T]`` with one ``image_token_id`` per merged image token.
            pixel_values: ``[N, C·T·P·P]`` patches of all images (`lmforge.vision.processor`).
            image_grid_thw: ``[I, 3]`` each image's (t, h, w) in patches.
            position_ids: ``[3, B, T]`` M-RoPE ids (or ``[B, T]``); derived when omitted —
                from the placeholders for a prompt, from the remembered deltas when the
                ``cache`` already holds the prompt.
            image_features: precomputed `image_features` instead of ``pixel_values``.
            output_hidden_states: also return the body's final hidden states ``[B, T, D]``
                (the pointer head's input, `pointer_logits`).
            The rest as `CausalLM.forward`.
        """
        x = self.embed(input_ids, pixel_values, image_grid_thw, image_features)
        past = cache.length if cache is not None and not getattr(cache, "paged", False) else 0
        if position_ids is None and self.config.positions == "mrope":
            if past and self.rope_deltas is not None:
                b, t = input_ids.shape
                step = torch.arange(past, past + t, device=input_ids.device).expand(b, t)
                position_ids = step + self.rope_deltas.to(step.device)[:, None]
            else:
                docs = document_ids
                if cu_seqlens is not None and docs is None:
                    docs = _documents(cu_seqlens, *input_ids.shape)
                position_ids = self.position_ids(input_ids, image_grid_thw, attention_mask, docs)
        hidden = self.model(
            position_ids=position_ids,
            attention_mask=attention_mask,
            document_ids=document_ids,
            cu_seqlens=cu_seqlens,
            cache=cache,
            inputs_embeds=x,
        )
        out = lm_output(
            hidden, self.lm_head, labels, logits_to_keep, loss_reduction, loss_chunk_size
        )
        if labels is not None and self.training:
            add_balance_loss(self.model, out, labels, loss_reduction)
        if output_hidden_states:
            out.hidden_states = hidden
        return out

    def pointer_logits(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        image_grid_thw: torch.Tensor,
        queries: torch.Tensor,
        images: list[int],
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The pointer head's logits over image ``images[q]``'s tokens for each query
        position ``queries[q] = (row, t)`` of ``hidden [B, T, D]`` (`forward` with
        ``output_hidden_states``) → (``[Q, N_max]``, −inf past an image's tokens; each query's
        token grid ``(rows, cols)``, row-major as the tokens). Images count in placeholder
        order over the batch (``image_grid_thw``'s order)."""
        if self.pointer_head is None:
            raise ValueError("this model has no pointer head (VLMConfig.pointer_size = 0)")
        merge = self.config.vision.spatial_merge_size
        grid = image_grid_thw.tolist()
        if any(t != 1 for t, _, _ in grid):
            raise ValueError("the pointer head points into still images (grid t = 1), not video")
        grids = [(h // merge, w // merge) for _, h, w in grid]
        keys, mask = image_keys(hidden, input_ids, self.config.image_token_id,
                                [r * c for r, c in grids], images)  # fmt: skip
        q = hidden[queries[:, 0], queries[:, 1]]
        return self.pointer_head(q, keys, mask), [grids[i] for i in images]

    @torch.no_grad()
    def point(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        images: list[int] | None = None,
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Where each row of ``input_ids [B, T]`` points from its last position (a prompt
        ending where a point's coordinates would start, e.g. with ``click(``): the pointer
        head's logits ``[B, N_max]`` over image ``images[b]``'s tokens (−inf past a shorter
        image's; default image for one row: its last) and each row's token grid
        (`lmforge.models.pointer_head.pointer_point` reads a click from their softmax)."""
        if images is None:
            if input_ids.shape[0] != 1:
                raise ValueError("point(): name each row's image (`images`) for a batch of rows")
            images = [image_grid_thw.shape[0] - 1]
        out = self(input_ids, pixel_values, image_grid_thw, logits_to_keep=1,
                   output_hidden_states=True)  # fmt: skip
        b, t = input_ids.shape
        rows = torch.arange(b, device=input_ids.device)
        queries = torch.stack([rows, torch.full_like(rows, t - 1)], dim=1)
        logits, grids = self.pointer_logits(out.hidden_states, input_ids, image_grid_thw, queries,
                                            images)  # fmt: skip
        return logits.float(), grids

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        generator: torch.Generator | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prompt + up to ``max_new_tokens`` tokens ``[B, T + n]``: the images are encoded
        once, the prompt is prefilled into a `KVCache`, then one token per step (greedy, or
        sampled at ``temperature``). Rows that produced an EOS are padded with it.

        Prompts of different lengths go in one batch left-padded, with ``attention_mask``
        ``[B, T]`` (0 on the padding): padding takes no position and no attention, so each
        row decodes as it would alone (as transformers' ``generate`` with a mask). The image
        (and video) placeholder tokens are never generated: a generated placeholder would have
        no image behind it, and the next step could not embed it."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be ≥ 0")
        eos = (
            eos_token_id if eos_token_id is not None else self.generation_config.get("eos_token_id")
        )
        eos_ids = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else eos,
                               dtype=torch.long)  # fmt: skip
        b, t = input_ids.shape
        cache = KVCache.for_model(self.model, b, t + max_new_tokens)
        features = (
            None if pixel_values is None else self.image_features(pixel_values, image_grid_thw)
        )
        mask = attention_mask
        if mask is not None and mask.shape != (b, t):
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, expected {(b, t)}")
        out = self(input_ids, image_grid_thw=image_grid_thw, cache=cache, logits_to_keep=1,
                   image_features=features, attention_mask=mask)  # fmt: skip
        if mask is not None and self.rope_deltas is not None:
            # decode positions are cache slot + delta; the slots count the left padding
            self.rope_deltas = self.rope_deltas - (t - mask.sum(-1).to(self.rope_deltas))
        tokens, done = input_ids, torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        vocab = self.config.text.vocab_size
        placeholders = [i for i in (self.config.image_token_id, self.config.video_token_id)
                        if i is not None and i < vocab]  # fmt: skip
        for step in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            logits[:, placeholders] = float("-inf")
            if do_sample:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                nxt = logits.argmax(-1)
            if done.any():
                nxt = torch.where(done, eos_ids[0].to(nxt.device), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            done = done | torch.isin(nxt, eos_ids.to(nxt.device))
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            out = self(nxt[:, None], cache=cache, attention_mask=mask)
        return tokens


def _documents(cu_seqlens: torch.Tensor, b: int, t: int) -> torch.Tensor:
    """Document ids ``[B, T]`` of a flattened packed batch from its cumulative lengths."""
    flat = torch.arange(b * t, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].long(), flat, right=True).view(b, t)


__all__ = [
    "POSITION_MODES",
    "VLMConfig",
    "VisionLanguageModel",
    "image_token_spans",
    "language_rotary",
    "mrope_position_ids",
]
