"""The transformer prior over VQ codes (VQGAN §3.2, "compress, then generate"): an lmforge
`CausalLM` over the code grid flattened in raster order, conditioned by a prefix of class or
caption tokens.

    sequence = [prefix] c_0 c_1 … c_{h·w−1}           codes in raster order (row by row)
    class prefix:   one token; ids: codes 0 … K−1, class c → K + c, "no class" → K + C
                    (vocabulary K + C + 1)
    caption prefix: the caption's words, ``<bos> w₁ … w_n`` left-padded to P tokens by
                    `lmforge.diffusion.text_encoder.CaptionTokenizer`; word id t → K + t
                    (vocabulary K + V); the null caption is the empty one, ``<bos>`` alone

    p(s) = Π_i p(s_i | s_<i, prefix)                  (VQGAN eq. 8–9)

It is trained with the one Trainer and the language-model loss (`causal_lm_loss`; the prefix
is the prompt — its positions are masked out of the labels — so only codes are predicted);
the prefix is dropped to the null one ("no class" / the empty caption) with probability
``p_uncond`` so that one model gives both the conditional and the unconditional
distribution, for classifier-free guidance (Ho & Salimans 2022): l = l_∅ + s (l_c − l_∅).
Sampling always runs the inference engine (`lmforge.infer.Engine`, top-k / top-p /
temperature, a per-request seed): `CodeConstraint` masks the non-code ids; with guidance
(s ≠ 1) `GuidedCodeConstraint` — the same per-request logits hook, which the engine applies
after penalties and before temperature / top-k / top-p — replaces the request's conditional
logits by the guided ones, running the model on the unconditional stream (null prefix + the
codes drawn so far) itself. The codes are decoded to pixels by the VQGAN's decoder. The prior
is a plain lmforge LM: its folder is an HF checkpoint (`lmforge.save_model`) plus
``prior.json`` naming its VQGAN, code layout and (caption priors) caption tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.diffusion.text_encoder import CaptionTokenizer
from lmforge.generative.vqgan import VQGAN, load_vqgan
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.io import atomic_write_json, read_json
from lmforge.models.hf import load_model
from lmforge.models.transformer import CausalLM

__all__ = [
    "CAPTION_BOS_ID",
    "CAPTION_PAD_ID",
    "PRIOR_FILE",
    "CodeConstraint",
    "CodeSequenceLoader",
    "GuidedCodeConstraint",
    "PriorLayout",
    "caption_conditions",
    "condition_prefix",
    "decode_prior_samples",
    "encode_codes",
    "guided_code_logits",
    "load_prior",
    "prior_input_ids",
    "prior_labels",
    "raster_codes",
    "sample_codes",
    "unraster_codes",
    "write_prior_info",
]

PRIOR_FILE = "prior.json"


def raster_codes(indices: torch.Tensor) -> torch.Tensor:
    """Code grid [B, h, w] → sequence [B, h·w], row by row (raster order)."""
    return indices.reshape(indices.shape[0], -1)


def unraster_codes(sequence: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Sequence [B, h·w] → code grid [B, h, w] (`raster_codes` inverted)."""
    return sequence.reshape(sequence.shape[0], *grid)


CAPTION_PAD_ID = 0  # `CaptionTokenizer`'s ``<pad>`` id
CAPTION_BOS_ID = 1  # `CaptionTokenizer`'s ``<bos>`` id


@dataclass
class PriorLayout:
    """The prior's vocabulary and sequence shape (module docstring): class prefixes unless
    ``caption_vocab`` > 0 (then captions of ``caption_length`` tokens)."""

    num_codes: int
    num_classes: int
    grid: tuple[int, int]
    caption_vocab: int = 0
    caption_length: int = 0

    def __post_init__(self) -> None:
        if self.caption_vocab and self.caption_length < 1:
            raise ValueError(f"{self}: a caption prior needs caption_length ≥ 1")

    @property
    def captioned(self) -> bool:
        return self.caption_vocab > 0

    def class_token(self, label: int | torch.Tensor) -> int | torch.Tensor:
        return self.num_codes + label

    @property
    def null_token(self) -> int:
        """The "no class" id (class priors)."""
        return self.num_codes + self.num_classes

    @property
    def prefix_length(self) -> int:
        return self.caption_length if self.captioned else 1

    @property
    def null_prefix(self) -> list[int]:
        """The unconditional prefix: "no class", or the empty caption (``<bos>`` alone,
        left-padded with ``<pad>``)."""
        if not self.captioned:
            return [self.null_token]
        pad, bos = self.num_codes + CAPTION_PAD_ID, self.num_codes + CAPTION_BOS_ID
        return [pad] * (self.caption_length - 1) + [bos]

    @property
    def vocab_size(self) -> int:
        if self.captioned:
            return self.num_codes + self.caption_vocab
        return self.num_codes + self.num_classes + 1

    @property
    def length(self) -> int:
        """Codes per image."""
        return self.grid[0] * self.grid[1]


def condition_prefix(
    conditions: torch.Tensor, layout: PriorLayout, drop: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, P] prefix ids: class labels [B] → class tokens, caption word ids [B, P] (a
    `CaptionTokenizer`'s ``encode``) → K + id; rows where ``drop`` get the null prefix."""
    if layout.captioned:
        if conditions.dim() != 2 or conditions.shape[1] != layout.caption_length:
            raise ValueError(
                f"caption ids of shape {tuple(conditions.shape)}: expected [B, "
                f"{layout.caption_length}] (the prior's caption length)"
            )
        prefix = layout.num_codes + conditions.long()
    else:
        if conditions.dim() != 1:
            raise ValueError(f"class labels of shape {tuple(conditions.shape)}: expected [B]")
        prefix = layout.class_token(conditions.long())[:, None]
    if drop is not None:
        null = torch.tensor(layout.null_prefix, dtype=prefix.dtype)
        prefix = torch.where(drop[:, None], null.expand_as(prefix), prefix)
    return prefix


def prior_input_ids(
    codes: torch.Tensor,
    conditions: torch.Tensor,
    layout: PriorLayout,
    drop: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, P + h·w]: the prefix (`condition_prefix`; the null one where ``drop``), then the
    codes."""
    return torch.cat([condition_prefix(conditions, layout, drop), codes.long()], dim=1)


def prior_labels(input_ids: torch.Tensor, layout: PriorLayout) -> torch.Tensor:
    """The loss labels: ``input_ids`` with the prefix positions set to −100, so that only
    the codes are predicted (position 0 is never a target of the shifted loss anyway)."""
    labels = input_ids.clone()
    labels[:, : layout.prefix_length] = -100
    return labels


class CodeSequenceLoader:
    """Endless, resumable batches ``{"input_ids", "labels"}`` (`prior_labels`: the loss
    predicts every code from the prefix on) over raster code sequences [N, L] and their
    ``conditions`` (class labels [N] or caption ids [N, P], `condition_prefix`), each epoch a
    permutation drawn from (seed, epoch); the prefix is dropped with ``p_uncond`` by a
    generator seeded by (seed, epoch, position), so the stream is a pure function of the
    seed and the position — ``state_dict()`` is all an exact resume needs."""

    def __init__(
        self,
        codes: torch.Tensor,
        conditions: torch.Tensor,
        layout: PriorLayout,
        batch_size: int,
        seed: int = 0,
        p_uncond: float = 0.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be ≥ 1")
        self.codes, self.conditions, self.layout = codes, conditions, layout
        self.batch_size, self.seed, self.p_uncond = batch_size, seed, p_uncond
        self.epoch = self.position = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> dict[str, torch.Tensor]:
        stream = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + self.position
        g = torch.Generator().manual_seed(stream % 2**63)
        parts, need = [], self.batch_size
        while need:
            perm_g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(len(self.codes), generator=perm_g)
            take = perm[self.position : self.position + need]
            parts.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position >= len(perm):
                self.epoch, self.position = self.epoch + 1, 0
        index = torch.cat(parts)
        drop = torch.rand(len(index), generator=g) < self.p_uncond
        ids = prior_input_ids(self.codes[index], self.conditions[index], self.layout, drop)
        return {"input_ids": ids, "labels": prior_labels(ids, self.layout)}

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]


class CodeConstraint:
    """The engine's `Constraint` for one image: only code ids (< K) may be drawn, and the
    request ends after ``length`` codes."""

    def __init__(self, num_codes: int, length: int) -> None:
        self.num_codes, self.length, self.count = num_codes, length, 0

    def mask_logits(self, logits: torch.Tensor) -> None:
        logits[..., self.num_codes :] = float("-inf")

    def accept(self, token_id: int) -> None:
        if not 0 <= token_id < self.num_codes:
            raise ValueError(f"token {token_id} is not a code id (< {self.num_codes})")
        self.count += 1

    def is_finished(self) -> bool:
        return self.count >= self.length


@torch.no_grad()
def encode_codes(vqgan: VQGAN, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images → raster code sequences [N, h·w] (the VQGAN in eval mode: no codebook update)."""
    vqgan.eval()
    parts = [
        vqgan.encode(images[i : i + batch_size]).indices for i in range(0, len(images), batch_size)
    ]
    return raster_codes(torch.cat(parts))


def guided_code_logits(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float, num_codes: int
) -> torch.Tensor:
    """l_∅ + s (l_c − l_∅) over the code ids (the rest −∞): classifier-free guidance."""
    logits = uncond + scale * (cond - uncond)
    logits[..., num_codes:] = float("-inf")
    return logits


class GuidedCodeConstraint(CodeConstraint):
    """`CodeConstraint` with classifier-free guidance, for one engine request: the engine
    hands ``mask_logits`` the request's conditional logits l_c (after penalties, before
    temperature / top-k / top-p); they are replaced in place by l_∅ + s (l_c − l_∅), where
    l_∅ comes from running ``model`` on the unconditional stream — ``null_prefix`` followed
    by the codes this request accepted so far (recomputed each step: the streams are a few
    dozen tokens). Scale 1 skips the unconditional forward, so it *is* plain conditional
    sampling; scale 0 samples the unconditional distribution."""

    def __init__(
        self, model: CausalLM, null_prefix: list[int], num_codes: int, length: int, scale: float
    ) -> None:
        super().__init__(num_codes, length)
        self.model, self.scale = model, float(scale)
        self.uncond = [int(t) for t in null_prefix]

    @torch.no_grad()
    def unconditional_logits(self, device: torch.device) -> torch.Tensor:
        ids = torch.tensor([self.uncond], device=device)
        return self.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()

    def mask_logits(self, logits: torch.Tensor) -> None:
        if self.scale != 1.0:
            uncond = self.unconditional_logits(logits.device)
            guided = guided_code_logits(logits.float(), uncond, self.scale, self.num_codes)
            logits.copy_(guided.to(logits.dtype))
        super().mask_logits(logits)

    def accept(self, token_id: int) -> None:
        super().accept(token_id)
        self.uncond.append(int(token_id))


@torch.no_grad()
def sample_codes(
    model: CausalLM,
    layout: PriorLayout,
    conditions: torch.Tensor | None,
    num: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    cfg_scale: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """``num`` code grids [num, h, w] for ``conditions`` — class labels [num], or caption ids
    [num, P] for a caption prior (None: unconditional, the null prefix) — drawn by the
    inference engine, sample i seeded ``seed + i``; ``cfg_scale`` ≠ 1 guides each request
    with `GuidedCodeConstraint` (unconditional samples need no guidance: l_c = l_∅)."""
    model.eval()
    if conditions is None:
        prefixes = torch.tensor([layout.null_prefix] * num)
    else:
        prefixes = condition_prefix(conditions, layout)
        if len(prefixes) != num:
            raise ValueError(f"{len(prefixes)} conditions for {num} samples")

    def constraint() -> CodeConstraint:
        if cfg_scale == 1.0 or conditions is None:
            return CodeConstraint(layout.num_codes, layout.length)
        return GuidedCodeConstraint(
            model, layout.null_prefix, layout.num_codes, layout.length, cfg_scale
        )

    engine = Engine(model, max_num_seqs=max(1, min(num, 64)))
    params = [
        SamplingParams(
            max_tokens=layout.length, temperature=temperature, top_k=top_k, top_p=top_p,
            seed=seed + i, ignore_eos=True, constraint=constraint(),
        )
        for i in range(num)
    ]  # fmt: skip
    outs = engine.generate(prefixes.tolist(), params)
    codes = torch.tensor([list(o.token_ids) for o in outs])
    return unraster_codes(codes, layout.grid)


def caption_conditions(info: dict[str, Any], captions: list[str]) -> torch.Tensor:
    """Caption ids [N, P] for a caption prior's `sample_codes`, with the tokenizer saved in
    its ``prior.json`` (``info``, from `load_prior`); a word it never saw is an error."""
    if "caption_tokenizer" not in info:
        raise ValueError("this prior is class-conditional (no caption_tokenizer in prior.json)")
    tokenizer = CaptionTokenizer.from_dict(info["caption_tokenizer"])
    unknown = sorted({w for c in captions for w in tokenizer.unknown_words(c)})
    if unknown:
        raise ValueError(f"caption words the prior never saw: {', '.join(unknown)}")
    return tokenizer.encode(captions)[0]


@torch.no_grad()
def decode_prior_samples(vqgan: VQGAN, codes: torch.Tensor) -> torch.Tensor:
    """Code grids → images in [-1, 1] through the VQGAN decoder."""
    vqgan.eval()
    device = next(vqgan.parameters()).device
    return vqgan.decode_codes(codes.to(device)).clamp(-1, 1).cpu()


def write_prior_info(
    folder: str | os.PathLike,
    layout: PriorLayout,
    vqgan_dir: str,
    class_names: list[str],
    caption_tokenizer: dict[str, Any] | None = None,
) -> Path:
    """``prior.json``: the VQGAN folder (absolute), the code layout, the class names and, for
    a caption prior, its tokenizer (`CaptionTokenizer.to_dict`)."""
    path = Path(folder) / PRIOR_FILE
    info = {"vqgan": str(Path(vqgan_dir).resolve()), **asdict(layout), "class_names": class_names}
    if caption_tokenizer is not None:
        info["caption_tokenizer"] = caption_tokenizer
    atomic_write_json(path, info)
    return path


def load_prior(folder: str | os.PathLike) -> tuple[CausalLM, VQGAN, PriorLayout, dict[str, Any]]:
    """(the prior LM, its VQGAN, the layout, prior.json) from a saved prior folder."""
    path = Path(folder) / PRIOR_FILE
    if not path.is_file():
        raise ValueError(f"{folder}: no {PRIOR_FILE} (not a VQ prior saved by lmforge vqgan prior)")
    info = read_json(path, "VQ prior info")
    layout = PriorLayout(
        info["num_codes"], info["num_classes"], tuple(info["grid"]),
        int(info.get("caption_vocab", 0)), int(info.get("caption_length", 0)),
    )  # fmt: skip
    model = load_model(folder, dtype=torch.float32).eval()
    return model, load_vqgan(info["vqgan"]), layout, info
