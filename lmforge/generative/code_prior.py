"""The transformer prior over VQ codes (VQGAN §3.2, "compress, then generate"): an lmforge
`CausalLM` over the code grid flattened in raster order, conditioned by a class prefix token.

    sequence = [class token] c_0 c_1 … c_{h·w−1}     codes in raster order (row by row)
    ids: codes 0 … K−1, class c → K + c, "no class" → K + C  (vocabulary K + C + 1)

    p(s) = Π_i p(s_i | s_<i, class)                   (VQGAN eq. 8–9)

It is trained with the one Trainer and the language-model loss (`causal_lm_loss`; the class
token is the prompt, so only codes are predicted); the class is dropped to "no class" with
probability ``p_uncond`` so that one model gives both the conditional and the unconditional
distribution, for classifier-free guidance (Ho & Salimans 2022): l = l_∅ + s (l_c − l_∅).
Sampling runs the inference engine (`lmforge.infer.Engine`, top-k / top-p / temperature, a
per-request seed) with `CodeConstraint` masking the non-code ids; with guidance (s ≠ 1) a
short loop over the model runs the two streams side by side instead (the engine samples one
distribution per request). The codes are decoded to pixels by the VQGAN's decoder. The prior
is a plain lmforge LM: its folder is an HF checkpoint (`lmforge.save_model`) plus
``prior.json`` naming its VQGAN and code layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.generative.vqgan import VQGAN, load_vqgan
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.infer.sampling import process_logits
from lmforge.io import atomic_write_json, read_json
from lmforge.models.hf import load_model
from lmforge.models.transformer import CausalLM

__all__ = [
    "PRIOR_FILE",
    "CodeConstraint",
    "CodeSequenceLoader",
    "PriorLayout",
    "decode_prior_samples",
    "encode_codes",
    "guided_code_logits",
    "load_prior",
    "prior_input_ids",
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


@dataclass
class PriorLayout:
    """The prior's vocabulary and sequence shape (module docstring)."""

    num_codes: int
    num_classes: int
    grid: tuple[int, int]

    def class_token(self, label: int | torch.Tensor) -> int | torch.Tensor:
        return self.num_codes + label

    @property
    def null_token(self) -> int:
        return self.num_codes + self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.num_codes + self.num_classes + 1

    @property
    def length(self) -> int:
        """Codes per image."""
        return self.grid[0] * self.grid[1]


def prior_input_ids(
    codes: torch.Tensor, labels: torch.Tensor, layout: PriorLayout, drop: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, 1 + h·w]: the class token (the "no class" token where ``drop``) then the codes."""
    prefix = layout.class_token(labels.long())
    if drop is not None:
        prefix = torch.where(drop, torch.full_like(prefix, layout.null_token), prefix)
    return torch.cat([prefix[:, None], codes.long()], dim=1)


class CodeSequenceLoader:
    """Endless, resumable batches ``{"input_ids", "labels"}`` (labels = input_ids: the loss
    predicts every code from the class token on) over raster code sequences [N, L], each
    epoch a permutation drawn from (seed, epoch); the class is dropped with ``p_uncond`` by a
    generator seeded by (seed, epoch, position), so the stream is a pure function of the
    seed and the position — ``state_dict()`` is all an exact resume needs."""

    def __init__(
        self,
        codes: torch.Tensor,
        labels: torch.Tensor,
        layout: PriorLayout,
        batch_size: int,
        seed: int = 0,
        p_uncond: float = 0.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be ≥ 1")
        self.codes, self.labels, self.layout = codes, labels, layout
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
        ids = prior_input_ids(self.codes[index], self.labels[index], self.layout, drop)
        return {"input_ids": ids, "labels": ids.clone()}

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


@torch.no_grad()
def sample_codes(
    model: CausalLM,
    layout: PriorLayout,
    labels: torch.Tensor | None,
    num: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    cfg_scale: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """``num`` code grids [num, h, w] for ``labels`` (None: unconditional, the "no class"
    prefix). Guidance 1: the inference engine (sample i seeded ``seed + i``); otherwise the
    guided loop of the module docstring."""
    model.eval()
    if labels is None:
        prefixes = torch.full((num,), layout.null_token)
    else:
        prefixes = layout.class_token(labels.long())
    if cfg_scale == 1.0:
        engine = Engine(model, max_num_seqs=max(1, min(num, 64)))
        params = [
            SamplingParams(
                max_tokens=layout.length, temperature=temperature, top_k=top_k, top_p=top_p,
                seed=seed + i, ignore_eos=True, constraint=CodeConstraint(layout.num_codes, layout.length),
            )
            for i in range(num)
        ]  # fmt: skip
        outs = engine.generate([[int(p)] for p in prefixes], params)
        codes = torch.tensor([list(o.token_ids) for o in outs])
        return unraster_codes(codes, layout.grid)
    g = torch.Generator().manual_seed(seed)
    cond = prefixes[:, None]
    uncond = torch.full_like(cond, layout.null_token)
    device = next(model.parameters()).device
    for _ in range(layout.length):
        both = torch.cat([cond, uncond]).to(device)
        last = model(input_ids=both, logits_to_keep=1).logits[:, -1].float().cpu()
        logits = guided_code_logits(last[:num], last[num:], cfg_scale, layout.num_codes)
        probs = process_logits(logits, temperature, top_k, top_p).softmax(-1)
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            nxt = torch.multinomial(probs, 1, generator=g)
        cond, uncond = torch.cat([cond, nxt], 1), torch.cat([uncond, nxt], 1)
    return unraster_codes(cond[:, 1:], layout.grid)


@torch.no_grad()
def decode_prior_samples(vqgan: VQGAN, codes: torch.Tensor) -> torch.Tensor:
    """Code grids → images in [-1, 1] through the VQGAN decoder."""
    vqgan.eval()
    device = next(vqgan.parameters()).device
    return vqgan.decode_codes(codes.to(device)).clamp(-1, 1).cpu()


def write_prior_info(folder: str | os.PathLike, layout: PriorLayout, vqgan_dir: str,
                     class_names: list[str]) -> Path:  # fmt: skip
    """``prior.json``: the VQGAN folder (absolute), the code layout, the class names."""
    path = Path(folder) / PRIOR_FILE
    info = {"vqgan": str(Path(vqgan_dir).resolve()), **asdict(layout), "class_names": class_names}
    atomic_write_json(path, info)
    return path


def load_prior(folder: str | os.PathLike) -> tuple[CausalLM, VQGAN, PriorLayout, dict[str, Any]]:
    """(the prior LM, its VQGAN, the layout, prior.json) from a saved prior folder."""
    path = Path(folder) / PRIOR_FILE
    if not path.is_file():
        raise ValueError(f"{folder}: no {PRIOR_FILE} (not a VQ prior saved by lmforge vqgan prior)")
    info = read_json(path, "VQ prior info")
    layout = PriorLayout(info["num_codes"], info["num_classes"], tuple(info["grid"]))
    model = load_model(folder, dtype=torch.float32).eval()
    return model, load_vqgan(info["vqgan"]), layout, info
