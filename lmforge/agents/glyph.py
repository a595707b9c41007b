"""A dense glyph (OCR) objective for the agent's vision encoder: every image token predicts
the characters drawn in its cell (`lmforge.models.glyph_head`), so the encoder has to learn
to *read* — which grounding alone never taught it (BENCHMARKS.md, "GUI agent: can a
reading task …": a linear probe finds no more of a list row's number in the trained
encoder's features than in the raw pixels).

Targets come from the renderer's own layout (`lmforge.agents.render.render_window_glyphs`:
one box per drawn, still visible character, from the same pass that draws the pixels).
A token's cell is ``cell`` × ``cell`` px (patch size × merge size); a glyph belongs to the
cell holding its box's centre; a cell's glyphs are ordered by centre x (then y) and fill
``slots`` ordered slots (class 0 = none; further glyphs are dropped, rare with 2 slots at
8-px cells: a digit is 5 px wide):

    glyph_targets(glyphs, (128, 128), cell=8, slots=2)   # LongTensor [16·16, 2]

``make_agent_dataset(..., glyphs=True)`` keeps each example's glyphs in
``meta["glyphs"]`` (one list per image; shifted and zoomed images get theirs moved the same
way); `example_glyph_targets` turns them into an encoded example's targets (−100 for images
without glyphs, e.g. trajectory screenshots), `GlyphPackedLoader` adds ``glyph_targets``
to the packed batches, and `glyph_objective` wraps any VLM objective (``vlm_objective``,
``pointer_objective``) with ``weight`` × the head's mean cross-entropy on the features the
vision encoder hands to the language model (captured by a forward hook, so the encoder
runs once). `glyph_pretrain` is an optional encoder-only stage on the glyph loss alone.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from lmforge.agents.agent_data import ROW_QUESTION, box_glyphs
from lmforge.agents.random_screens import random_window
from lmforge.agents.render import Glyph, glyph_centre, render_window_glyphs
from lmforge.models.glyph_head import IGNORE, GlyphHead, glyph_accuracy, glyph_loss
from lmforge.models.pointer_head import image_keys
from lmforge.train.distributed import unwrap
from lmforge.train.objective import LossOutput, Objective
from lmforge.vision.vlm_data import MultimodalPackedLoader, message_text

# class 0: no glyph; 1 … 94: the printable ASCII characters "!" … "~"; 95: any other
CHARSET = "".join(c for c in string.printable if c.isprintable() and not c.isspace())
NONE = 0
OTHER = len(CHARSET) + 1
NUM_CLASSES = len(CHARSET) + 2
_CLASS = {c: i + 1 for i, c in enumerate(CHARSET)}


def char_class(char: str) -> int:
    """The class id of ``char`` (1 … 94 for printable ASCII, `OTHER` otherwise)."""
    return _CLASS.get(char, OTHER)


def class_char(index: int) -> str:
    """The character of class ``index`` ("" for none, "?" for other)."""
    return "" if index == NONE else CHARSET[index - 1] if index < OTHER else "?"


def glyph_targets(
    glyphs: Sequence[Glyph], size: tuple[int, int], cell: int = 8, slots: int = 2
) -> torch.Tensor:
    """``[rows·cols, slots]`` class ids (row-major cells of ``cell`` px over a ``(width,
    height)`` image): each cell's glyphs (centre inside it) by centre x then y, the first
    ``slots`` of them; `NONE` elsewhere. Glyphs centred off the image are left out."""
    w, h = size
    rows, cols = h // cell, w // cell
    per_cell: dict[int, list[tuple[float, float, int]]] = {}
    for g in glyphs:
        x, y = glyph_centre(g)
        if not (0 <= x < cols * cell and 0 <= y < rows * cell):
            continue
        k = int(y // cell) * cols + int(x // cell)
        per_cell.setdefault(k, []).append((x, y, char_class(g.char)))
    out = torch.full((rows * cols, slots), NONE, dtype=torch.long)
    for k, found in per_cell.items():
        for s, (_, _, c) in enumerate(sorted(found)[:slots]):
            out[k, s] = c
    return out


def example_glyph_targets(
    example: Any, tokens_per_image: Sequence[int], cell: int = 8, slots: int = 2
) -> torch.Tensor:
    """``[Σ tokens, slots]``: `glyph_targets` of each of ``example``'s images from
    ``meta["glyphs"]`` (one glyph list per image, or None), −100 for an image without
    glyphs. ``tokens_per_image`` (the encoded example's) must match the cell grid."""
    per_image = (getattr(example, "meta", None) or {}).get("glyphs")
    parts = []
    for i, (image, n) in enumerate(zip(example.images, tokens_per_image, strict=True)):
        glyphs = per_image[i] if per_image is not None and i < len(per_image) else None
        if glyphs is None:
            parts.append(torch.full((n, slots), IGNORE, dtype=torch.long))
            continue
        h, w = np.asarray(image).shape[:2]
        t = glyph_targets(glyphs, (w, h), cell, slots)
        if t.shape[0] != n:
            raise ValueError(f"image {i}: {t.shape[0]} glyph cells of {cell} px but {n} image "
                             f"tokens (the processor resized it?)")  # fmt: skip
        parts.append(t)
    return torch.cat(parts) if parts else torch.zeros(0, slots, dtype=torch.long)


class GlyphPackedLoader(MultimodalPackedLoader):
    """`MultimodalPackedLoader` whose batches also hold ``glyph_targets [Σ image tokens,
    slots]``: the examples' ``targets`` (one tensor per example) in the batch's image order;
    with ``query_targets`` (one ``[queries, slots]`` tensor per example, `query_number_targets`)
    also ``query_targets [Q, slots]`` in the order of the batch's ``pointer_queries``; with
    ``key_points`` (one ``[queries, 2]`` tensor per example, `query_label_targets`) also
    ``key_points [Q, 2]``, the normalised point of each query's key token (NaN: the box's)."""

    def __init__(
        self,
        examples,
        targets: Sequence[torch.Tensor],
        *args,
        query_targets: Sequence[torch.Tensor] | None = None,
        key_points: Sequence[torch.Tensor] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(examples, *args, **kwargs)
        if len(targets) != len(self.examples):
            raise ValueError(f"{len(targets)} glyph targets for {len(self.examples)} examples")
        if query_targets is not None:
            bad = [i for i, (t, e) in enumerate(zip(query_targets, self.examples, strict=False))
                   if t.shape[0] != len(e.pointer_positions)]  # fmt: skip
            if len(query_targets) != len(self.examples) or bad:
                raise ValueError("query targets must give one row per pointer query of each "
                                 f"example (example {bad[0] if bad else len(query_targets)})")  # fmt: skip
        if key_points is not None and (query_targets is None or [len(k) for k in key_points]
                                       != [len(q) for q in query_targets]):  # fmt: skip
            raise ValueError("key points must come with query targets, one per pointer query")
        self.targets = list(targets)
        self.query_targets = None if query_targets is None else list(query_targets)
        self.key_points = None if key_points is None else list(key_points)

    def collate(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        batch = super().collate(rows)
        batch["glyph_targets"] = torch.cat([self.targets[i] for row in rows for i in row])
        if self.query_targets is not None:
            batch["query_targets"] = torch.cat([self.query_targets[i] for row in rows for i in row])
        if self.key_points is not None:
            batch["key_points"] = torch.cat([self.key_points[i] for row in rows for i in row])
        return batch


def query_number_targets(
    example: Any, queries: Sequence[Any], slots: int = 2, question: str = "Click on the row "
) -> torch.Tensor:
    """``[len(queries), slots]``: for each pointer query (`lmforge.vision.vlm_data.
    PointerQuery`, in ``encode_chat``'s order) whose turn asks ``question`` … (a list row:
    "Click on the row 'invoice 17'."), the named item's trailing number as glyph classes, one
    digit per slot in reading order (``1``, ``7``; `NONE` after the last digit); −100 (ignored)
    for every other query and for an item without a number. The targets of `query_objective`."""
    messages = example.messages()
    out = torch.full((len(queries), slots), IGNORE, dtype=torch.long)
    for k, q in enumerate(queries):
        text = message_text(messages[q.message - 1]) if q.message > 0 else ""
        if not text.startswith(question):
            continue
        item = text[len(question) :].rstrip(".").strip("'")
        number = item.rsplit(" ", 1)[-1]
        if number.isdigit() and len(number) <= slots:
            out[k] = NONE
            for s, ch in enumerate(number):
                out[k, s] = char_class(ch)
    return out


def query_label_targets(
    example: Any, queries: Sequence[Any], screen: tuple[int, int], slots: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """``agent.query_labels``: `query_number_targets` plus, for any other grounding query whose
    box shows its label (the box's glyphs, left to right, begin with the label's first
    ``slots`` characters), those characters, and as key point the centre of the last of them
    (normalised by ``screen``; NaN: the box's own key, or none). Returns ``(targets [Q, slots],
    key_points [Q, 2])``. A probe read labels from the query at 0.99, from that token at 0.74."""
    targets = query_number_targets(example, queries, slots)
    points = torch.full((len(queries), 2), float("nan"))
    glyphs = ((example.meta or {}).get("glyphs") or [None])[-1]
    messages, (width, height) = example.messages(), screen
    for k, q in enumerate(queries):
        text = message_text(messages[q.message - 1]) if q.message > 0 else ""
        if not glyphs or not text.startswith("Click on the ") or text.startswith(ROW_QUESTION):
            continue
        label = (text.split("'") + ["", ""])[1]
        inside = box_glyphs(tuple(v * f for v, f in zip(q.box, screen * 2, strict=True)), glyphs)
        if len(label) < slots or "".join(g.char for g in inside[:slots]) != label[:slots]:
            continue
        targets[k] = torch.tensor([char_class(c) for c in label[:slots]])
        points[k] = torch.tensor(glyph_centre(inside[slots - 1])) / torch.tensor([width, height])
    return targets, points


def query_head_of(model: torch.nn.Module) -> GlyphHead:
    return _head_of(model, "query_head")


def attach_query_head(model: torch.nn.Module, slots: int = 2) -> GlyphHead:
    """Give ``model`` a fresh train-only `GlyphHead` as ``model.query_head`` that reads the
    named item's number from the pointer *query* (`query_objective`); `detach_query_head`
    takes it off before export."""
    return _attach_head(model, "query_head", slots)


def detach_query_head(model: torch.nn.Module) -> GlyphHead | None:
    """Remove and return ``model.query_head`` (None if it has none)."""
    return _detach_head(model, "query_head")


def last_digit_tokens(
    model: torch.nn.Module, hidden: torch.Tensor, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """``[Q, D]``: for each pointer query, the final hidden state at the image token whose
    cell holds the right end of the query's box — for a list-row query with ``row_target``
    "number" / "last_digit" (`lmforge.agents.agent_data.number_box`) the token of the row's
    last digit, the one whose causal context holds the whole number; where the batch has
    ``key_points`` (`query_label_targets`), a finite point names the token instead."""
    inner = unwrap(model)
    merge = inner.config.vision.spatial_merge_size
    grids = [(h // merge, w // merge) for _, h, w in batch["image_grid_thw"].tolist()]
    keys, _ = image_keys(hidden, batch["input_ids"].to(hidden.device), inner.config.image_token_id,
                         [r * c for r, c in grids], batch["pointer_images"].tolist())  # fmt: skip
    boxes = batch["pointer_boxes"].tolist()
    points = (
        batch["key_points"].tolist() if "key_points" in batch else [[math.nan] * 2] * len(boxes)
    )
    picks = []
    for q, (box, point, image) in enumerate(zip(boxes, points, batch["pointer_images"].tolist(),
                                                strict=True)):  # fmt: skip
        rows, cols = grids[image]
        x, y = (box[2] - 1e-6 / cols, box[1]) if math.isnan(point[0]) else point
        r = min(rows - 1, max(0, int(y * rows)))
        c = min(cols - 1, max(0, int(x * cols)))
        picks.append(keys[q, r * cols + c])
    return torch.stack(picks)


def query_objective(base: Objective, weight: float, keys: bool = False) -> Objective:
    """``base`` (a `pointer_objective`, possibly in `glyph_objective`) + ``weight`` × the
    mean cross-entropy of a train-only head (`attach_query_head`) that reads the question's
    item number (``query_targets``, `query_number_targets`) from the language model's final
    hidden state at each pointer query — the matching's other half: the glyph objective puts
    a row's number into the image tokens (the pointer's keys), this one into the query that
    must meet them (issue 18: a probe found the row number in the keys, not in the query).
    The final hidden states are captured by a forward hook on the language model's body
    during ``base``'s forward. Logs ``query_loss`` and ``query_acc`` (digit slots right).
    ``keys``: the same head also reads the number from the row's last-digit image token
    (`last_digit_tokens`) and ``weight`` × that loss is added too, so query and key carry the
    number in one shared code (a contrastive-style tie of the two sides, as in CLIP's shared
    embedding, Radford et al. 2021, but through a shared classifier); logs ``key_loss``."""

    def objective(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        targets, queries = batch.get("query_targets"), batch.get("pointer_queries")
        captured: list[torch.Tensor] = []
        hook = unwrap(model).model.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            out = base(model, batch)
        finally:
            hook.remove()
        if targets is None or queries is None or not bool((targets != IGNORE).any()):
            zero = out.loss_sum.new_zeros(())
            return LossOutput(out.loss_sum, out.count,
                              {**out.metrics, "query_loss": zero, "query_acc": zero})  # fmt: skip
        hidden = captured[-1]
        queries = queries.to(hidden.device)
        logits = query_head_of(model)(hidden[queries[:, 0], queries[:, 1]])
        targets = targets.to(hidden.device)
        mean = glyph_loss(logits, targets)
        right, n = glyph_accuracy(logits.detach(), targets)
        count = torch.as_tensor(out.count)
        scale = count.clamp(min=1).to(mean.dtype).to(mean.device)
        acc = right.float() / max(1, n) * scale
        metrics = {**out.metrics, "query_loss": mean.detach() * scale, "query_acc": acc}
        total = mean
        if keys:
            key_mean = glyph_loss(query_head_of(model)(last_digit_tokens(model, hidden, batch)),
                                  targets)  # fmt: skip
            metrics["key_loss"] = key_mean.detach() * scale
            total = mean + key_mean
        return LossOutput(out.loss_sum + weight * total * scale, out.count, metrics)

    return objective


def fresh_glyph_batches(
    processor: Any,
    images: int,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    cell: int = 8,
    slots: int = 2,
    weights: dict[str, int] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of ``images`` new random windows each (`random_window` with widget
    ``weights``, seeded by ``seed`` and the batch's number): ``pixel_values``,
    ``image_grid_thw`` and their ``glyph_targets`` — glyph pretraining on screens never
    repeated, instead of the SFT examples' few hundred screenshots."""
    step = 0
    while True:
        shots, targets = [], []
        for k in range(images):
            win = random_window(random.Random(f"glyph-fresh/{seed}/{step}/{k}"), *size,
                                weights=weights)  # fmt: skip
            image, glyphs = render_window_glyphs(win)
            shots.append(np.asarray(image))
            targets.append(glyph_targets(glyphs, size, cell, slots))
        pixels, grid = processor(shots)
        yield {"pixel_values": pixels, "image_grid_thw": grid,
               "glyph_targets": torch.cat(targets)}  # fmt: skip
        step += 1


def _head_of(model: torch.nn.Module, name: str) -> GlyphHead:
    head = getattr(unwrap(model), name, None)
    if head is None:
        kind = name.removesuffix("_head")
        raise ValueError(f"{kind} objective: the model has no {name} (attach_{name})")
    return head


def glyph_head_of(model: torch.nn.Module) -> GlyphHead:
    return _head_of(model, "glyph_head")


def attach_glyph_head(model: torch.nn.Module, slots: int = 2) -> GlyphHead:
    """Give ``model`` (a `VisionLanguageModel`) a fresh `GlyphHead` as ``model.glyph_head``
    on its image tokens' width (the language model's), so the optimizer and the training
    checkpoints hold it; `detach_glyph_head` takes it off before export."""
    return _attach_head(model, "glyph_head", slots)


def detach_glyph_head(model: torch.nn.Module) -> GlyphHead | None:
    """Remove and return ``model.glyph_head`` (None if it has none)."""
    return _detach_head(model, "glyph_head")


def _attach_head(model: torch.nn.Module, name: str, slots: int) -> GlyphHead:
    head = GlyphHead(model.config.text.hidden_size, slots, NUM_CLASSES)
    setattr(model, name, head)
    return head


def _detach_head(model: torch.nn.Module, name: str) -> GlyphHead | None:
    inner = unwrap(model)
    head = getattr(inner, name, None)
    if head is not None:
        delattr(inner, name)
    return head


def glyph_terms(
    head: GlyphHead, features: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean glyph loss, accuracy on the glyph-bearing targets) of ``features [N, D]``."""
    if features.shape[0] != targets.shape[0]:
        raise ValueError(f"{features.shape[0]} image tokens but {targets.shape[0]} glyph targets")
    logits = head(features)
    right, count = glyph_accuracy(logits.detach(), targets)
    return glyph_loss(logits, targets), right.float() / max(1, count)


def glyph_objective(base: Objective, weight: float) -> Objective:
    """``base`` (e.g. `pointer_objective`) + ``weight`` × the glyph head's mean cross-entropy
    over the batch's ``glyph_targets``, counted as that much loss per labelled token (the
    total is ``base mean + weight · glyph mean``, as `pointer_objective` adds its loss). The
    vision encoder's output (the image tokens the language model reads) is captured by a
    forward hook during ``base``'s forward. Logs ``glyph_loss`` and ``glyph_acc`` (argmax
    right on the slots that hold a glyph)."""

    def objective(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        targets = batch.get("glyph_targets")
        captured: list[torch.Tensor] = []
        hook = unwrap(model).visual.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            out = base(model, batch)
        finally:
            hook.remove()
        if targets is None or not captured or not bool((targets != IGNORE).any()):
            zero = out.loss_sum.new_zeros(())
            return LossOutput(out.loss_sum, out.count,
                              {**out.metrics, "glyph_loss": zero, "glyph_acc": zero})  # fmt: skip
        mean, acc = glyph_terms(glyph_head_of(model), captured[-1], targets.to(captured[-1].device))
        count = torch.as_tensor(out.count)
        scale = count.clamp(min=1).to(mean.dtype).to(mean.device)
        metrics = {**out.metrics, "glyph_loss": mean.detach() * scale, "glyph_acc": acc * scale}
        return LossOutput(out.loss_sum + weight * mean * scale, out.count, metrics)

    return objective


def glyph_pretrain(
    model: torch.nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    lr: float,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """An encoder-only stage: ``steps`` AdamW steps (constant ``lr``) of the glyph loss
    alone on ``model.visual`` + ``model.glyph_head`` over ``batches`` (packed batches with
    ``glyph_targets``); the language model is not run. Returns the losses."""
    head = glyph_head_of(model)
    visual = unwrap(model).visual
    params = [p for p in [*visual.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(steps):
        batch = next(batches)
        features = visual(batch["pixel_values"], batch["image_grid_thw"])
        loss, acc = glyph_terms(head, features, batch["glyph_targets"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % max(1, steps // 10) == 0:
            log(f"glyph pretraining {step + 1}/{steps}: loss {losses[-1]:.4f} acc {float(acc):.3f}")
    return losses


__all__ = [
    "CHARSET",
    "NONE",
    "NUM_CLASSES",
    "OTHER",
    "GlyphPackedLoader",
    "attach_glyph_head",
    "attach_query_head",
    "char_class",
    "class_char",
    "detach_glyph_head",
    "detach_query_head",
    "fresh_glyph_batches",
    "example_glyph_targets",
    "glyph_head_of",
    "glyph_objective",
    "glyph_pretrain",
    "glyph_targets",
    "glyph_terms",
    "last_digit_tokens",
    "query_head_of",
    "query_label_targets",
    "query_number_targets",
    "query_objective",
]
