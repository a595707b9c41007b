"""A pointer head for visual grounding (GUI-Actor, Wu et al. 2025, arXiv:2506.03143): instead
of writing a click's coordinates as text, the model *points* at one of the screenshot's
image tokens.

The query is the language model's final hidden state ``h_q`` at the position that would
write the point's first coordinate (the last token of ``click(``); the keys are the final
hidden states ``h_i`` at the image's tokens. Each side goes through a two-layer MLP and

    logits_i = ⟨MLP_q(h_q), MLP_k(h_i)⟩ / √d,        p = softmax(logits) over the image tokens

(GUI-Actor §3.2, "action head"). Training is cross-entropy against a target spread uniformly
over the tokens whose patch overlaps the element's box (§3.3, "multi-patch supervision"):
``L = −Σ_i t_i log p_i``. A click is read out as the probability-weighted centre of the
4-connected region of tokens with ``p ≥ 0.3 · max p`` that holds the argmax (`pointer_point`).

Points and boxes are **normalised** to the image: x and y in [0, 1], so a token grid of
``(rows, cols)`` covers ``[c/cols, (c+1)/cols) × [r/rows, (r+1)/rows)`` whatever the image's
pixel size. Measured on the tiny agent VLM (BENCHMARKS.md, "GUI agent grounding with a
pointer head"): held-out single buttons on random themes 1.00 where text coordinates never
learned x, full held-out windows 0.66–0.69 against 0.345 for the best text answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

Box = tuple[float, float, float, float]  # x0, y0, x1, y1, normalised to [0, 1]


class PointerHead(nn.Module):
    """``forward(queries [Q, D], keys [Q, N, D], mask [Q, N] | None)`` → logits ``[Q, N]``
    (masked entries −inf): ``⟨MLP_q(q), MLP_k(k)⟩ / √size``."""

    def __init__(self, hidden_size: int, size: int) -> None:
        super().__init__()
        if hidden_size < 1 or size < 1:
            raise ValueError(f"pointer head sizes must be ≥ 1 (hidden {hidden_size}, size {size})")
        self.size = size
        self.query = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, size)
        )
        self.key = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, size)
        )

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self.query(queries)[:, None, :]
        k = self.key(keys)
        logits = (q * k).sum(-1) / math.sqrt(self.size)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits


def image_keys(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    image_token_id: int,
    tokens_per_image: Sequence[int],
    images: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys of each query: ``hidden [B, T, D]``'s states at the image tokens of image
    ``images[q]`` (images counted in placeholder order over the batch, row-major) →
    (``keys [Q, N_max, D]`` zero-padded, ``mask [Q, N_max]``)."""
    flat = hidden[input_ids == image_token_id]
    if flat.shape[0] != sum(tokens_per_image):
        raise ValueError(
            f"{flat.shape[0]} image placeholders but the images have {sum(tokens_per_image)} tokens"
        )
    bad = [i for i in images if not 0 <= i < len(tokens_per_image)]
    if bad:
        raise ValueError(
            f"pointer queries name image {bad[0]}; the batch has {len(tokens_per_image)}"
        )
    starts = [0]
    for n in tokens_per_image:
        starts.append(starts[-1] + n)
    width = max((tokens_per_image[i] for i in images), default=0)
    keys = hidden.new_zeros(len(images), width, hidden.shape[-1])
    mask = torch.zeros(len(images), width, dtype=torch.bool, device=hidden.device)
    for q, i in enumerate(images):
        n = tokens_per_image[i]
        keys[q, :n] = flat[starts[i] : starts[i + 1]]
        mask[q, :n] = True
    return keys, mask


POINTER_CELLS = ("overlap", "centre")


def pointer_target(box: Box, grid: tuple[int, int], cells: str = "overlap") -> torch.Tensor:
    """``[rows·cols]`` target, uniform over the box's cells (normalised x0, y0, x1, y1).

    ``cells="overlap"`` (GUI-Actor §3.3): every cell the box overlaps, so a cell the box
    enters by one pixel counts as much as one inside it. ``"centre"``: the cells whose centre
    lies in the box (``x0 ≤ cx < x1``, ``y0 ≤ cy < y1``); the region readout of any mass on
    them (`pointer_point`, a weighted mean of their centres) then lies inside the box too.
    A box holding no cell's centre falls back to its overlapping cells, and a box inside no
    cell (empty) puts all mass on the cell of its centre."""
    if cells not in POINTER_CELLS:
        raise ValueError(f"cells={cells!r}: choose one of {POINTER_CELLS}")
    rows, cols = grid
    x0, y0, x1, y1 = box
    cx = (torch.arange(cols, dtype=torch.float64) + 0.0) / cols
    cy = (torch.arange(rows, dtype=torch.float64) + 0.0) / rows
    over_x = (
        torch.minimum(cx + 1 / cols, torch.tensor(x1)) - torch.maximum(cx, torch.tensor(x0))
    ) > 1e-9
    over_y = (
        torch.minimum(cy + 1 / rows, torch.tensor(y1)) - torch.maximum(cy, torch.tensor(y0))
    ) > 1e-9
    t = (over_y[:, None] & over_x[None, :]).to(torch.float32)
    if cells == "centre":
        mx, my = cx + 0.5 / cols, cy + 0.5 / rows
        inside = ((my >= y0) & (my < y1))[:, None] & ((mx >= x0) & (mx < x1))[None, :]
        if inside.any():
            t = inside.to(torch.float32)
    if not t.any():
        r = min(rows - 1, max(0, int((y0 + y1) / 2 * rows)))
        c = min(cols - 1, max(0, int((x0 + x1) / 2 * cols)))
        t[r, c] = 1.0
    return (t / t.sum()).flatten()


def pointer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[Q]`` cross-entropies ``−Σ_i t_i log p_i`` (masked −inf logits carry no target)."""
    logp = logits.float().log_softmax(-1)
    return -(targets * logp.masked_fill(targets == 0, 0.0)).sum(-1)


def token_centre(index: int, grid: tuple[int, int]) -> tuple[float, float]:
    """The normalised centre of token ``index`` of a row-major ``(rows, cols)`` grid."""
    rows, cols = grid
    r, c = divmod(int(index), cols)
    return (c + 0.5) / cols, (r + 0.5) / rows


def pointer_point(
    probs: torch.Tensor, grid: tuple[int, int], threshold: float = 0.3
) -> tuple[float, float]:
    """The click of one query's ``probs [rows·cols]``: the probability-weighted centre of the
    4-connected region of tokens with ``p ≥ threshold · max p`` that holds the argmax."""
    rows, cols = grid
    p = probs[: rows * cols].detach().float().view(rows, cols).cpu()
    r0, c0 = divmod(int(p.argmax()), cols)
    floor = threshold * float(p[r0, c0])
    seen, stack = {(r0, c0)}, [(r0, c0)]
    while stack:
        r, c = stack.pop()
        for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if (
                0 <= rr < rows
                and 0 <= cc < cols
                and (rr, cc) not in seen
                and float(p[rr, cc]) >= floor
            ):
                seen.add((rr, cc))
                stack.append((rr, cc))
    weight = sum(float(p[r, c]) for r, c in seen)
    x = sum(float(p[r, c]) * (c + 0.5) / cols for r, c in seen) / weight
    y = sum(float(p[r, c]) * (r + 0.5) / rows for r, c in seen) / weight
    return x, y


def to_pixels(point: tuple[float, float], size: tuple[int, int]) -> tuple[int, int]:
    """A normalised point → integer pixel coordinates on a ``(width, height)`` screen."""
    w, h = size
    return min(w - 1, max(0, int(point[0] * w))), min(h - 1, max(0, int(point[1] * h)))


def normalise_box(box: Sequence[float], size: tuple[int, int]) -> Box:
    """A pixel box (x0, y0, x1, y1) on a ``(width, height)`` screen → normalised."""
    w, h = size
    x0, y0, x1, y1 = box
    return x0 / w, y0 / h, x1 / w, y1 / h


__all__ = [
    "Box",
    "POINTER_CELLS",
    "PointerHead",
    "image_keys",
    "normalise_box",
    "pointer_loss",
    "pointer_point",
    "pointer_target",
    "to_pixels",
    "token_centre",
]
