"""Held-out grounding of a GUI agent model: its clicks on grounding questions about
held-out layouts, by the pointer head when it has one (GUI-Actor; `point_clicks`, with an
optional second, zoomed look — iterative zoom-in) or its greedy text answers, scored inside
the target element's box, overall and split into list-row questions and the rest.

    figures = grounding_eval(model, tokenizer, processor, count=200, seed=1)
    figures["grounding_accuracy"], figures["grounding_rows"], figures["grounding_other"]
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from lmforge.agents.agent_data import make_agent_dataset, zoom_box, zoom_image
from lmforge.agents.metrics import click_accuracy
from lmforge.models.pointer_head import pointer_point, to_pixels
from lmforge.models.vlm import VisionLanguageModel
from lmforge.vision.processor import ImageProcessor
from lmforge.vision.vlm_data import answer_questions, encode_prompt, length_batches
from lmforge.vision.vlm_tasks import VQAExample

__all__ = ["grounding_eval", "has_pointer", "point_clicks", "split_by_rows"]


def has_pointer(model: Any) -> bool:
    """Whether ``model`` is a VLM with a pointer head (its clicks come from pointing)."""
    return getattr(model, "pointer_head", None) is not None


def point_clicks(
    model: VisionLanguageModel,
    tokenizer: Any,
    processor: ImageProcessor,
    examples: list[VQAExample],
    screen: tuple[int, int],
    batch_size: int = 32,
    zoom: int = 0,
    first_look: list[tuple[int, int]] | None = None,
) -> list[str]:
    """``click(x,y)`` answers of a pointer model to each example's first question: the
    prompt (the first user turn) with the assistant's ``click(`` appended, the pointer
    distribution at that ``(`` over the example's last image (`VisionLanguageModel.point`),
    read out by `pointer_point` and scaled to ``screen`` pixels. Prompts of equal length
    run together. ``zoom`` ≥ 2: then a second, closer look (iterative zoom-in) — the same
    question on the last image's crop of 1/``zoom`` around that click (`zoom_box`), enlarged
    ``zoom``× (`zoom_image`) — whose click, mapped back to the screen, is the answer (a
    model trained with ``agent.zoom``). ``first_look``: the first look's clicks (x, y px),
    when already taken."""
    first = first_look
    if first is None:
        first = _point_once(model, tokenizer, processor, examples, screen, batch_size)
    if zoom < 2:
        return [f"click({x},{y})" for x, y in first]
    looks, crops = [], []
    for ex, point in zip(examples, first, strict=True):
        crop = zoom_box(point, screen, zoom)
        crops.append(crop)
        looks.append(replace(ex, images=[*ex.images[:-1], zoom_image(ex.images[-1], crop, zoom)]))
    second = _point_once(model, tokenizer, processor, looks, screen, batch_size)
    return [f"click({c[0] + x // zoom},{c[1] + y // zoom})"
            for c, (x, y) in zip(crops, second, strict=True)]  # fmt: skip


@torch.no_grad()
def _point_once(
    model: VisionLanguageModel,
    tokenizer: Any,
    processor: ImageProcessor,
    examples: list[VQAExample],
    screen: tuple[int, int],
    batch_size: int,
) -> list[tuple[int, int]]:
    """The pointer's click (x, y px) for each example's first question (`point_clicks`)."""
    prefix = tokenizer.encode("click(")
    prompts = [encode_prompt(tokenizer, processor, ex.messages()[:1], ex.images) for ex in examples]
    answers: list[tuple[int, int]] = [(0, 0)] * len(examples)
    for part in length_batches([len(ids) for ids, _, _ in prompts], batch_size):
        images, seen = [], 0
        for i in part:
            seen += prompts[i][2].shape[0]
            images.append(seen - 1)  # each row's last image: its current screenshot
        logits, grids = model.point(
            torch.tensor([prompts[i][0] + prefix for i in part]),
            torch.cat([prompts[i][1] for i in part]),
            torch.cat([prompts[i][2] for i in part]),
            images,
        )
        for i, row, grid in zip(part, logits, grids, strict=True):
            answers[i] = to_pixels(pointer_point(row.softmax(-1), grid), screen)
    return answers


def grounding_eval(
    model: Any,
    tokenizer: Any,
    processor: ImageProcessor,
    count: int,
    seed: int,
    screen: int = 128,
    history: int = 2,
    question_first: bool = False,
    zoom: int = 0,
) -> dict[str, float]:
    """``grounding_accuracy`` on ``count`` held-out-layout grounding questions (data seed
    ``seed``): clicks by the pointer head (`point_clicks`) when the model has one, else its
    greedy text answers; a pointer model also reports its text answers'
    ``grounding_accuracy_text``. A click counts inside the element's box (`click_accuracy`).
    ``grounding_rows`` and ``grounding_other`` split the figure into the list-row questions
    (which need the row's item read) and the rest. A pointer model with ``zoom`` ≥ 2 also
    reports ``grounding_accuracy_zoom`` (and its ``…_rows`` / ``…_other``): the clicks of a
    second, closer look (`point_clicks`)."""
    data = make_agent_dataset("heldout_layout", max(1, count // 8), seed, history, 0.0, screen,
                              screen, question_first=question_first)  # fmt: skip
    ground = data["grounding"][:count]
    boxes = [ex.meta["target_box"] for ex in ground]
    answers = answer_questions(model, tokenizer, processor, ground, max_new_tokens=12)
    text = click_accuracy(answers, boxes, (screen, screen))
    pointer = has_pointer(model)
    first = (
        _point_once(model, tokenizer, processor, ground, (screen, screen), 32) if pointer else []
    )
    clicks = [f"click({x},{y})" for x, y in first] if pointer else answers
    is_row = [ex.question.startswith("Click on the row ") for ex in ground]
    out = split_by_rows("grounding", clicks, boxes, is_row, screen)
    if pointer:
        out["grounding_accuracy_text"] = text
    if pointer and zoom >= 2:
        zoomed = point_clicks(model, tokenizer, processor, ground, (screen, screen), zoom=zoom,
                              first_look=first)  # fmt: skip
        more = split_by_rows("grounding_zoom", zoomed, boxes, is_row, screen)
        out.update({("grounding_accuracy_zoom" if k == "grounding_zoom_accuracy" else k): v
                    for k, v in more.items() if not k.endswith("_n")})  # fmt: skip
    return out


def split_by_rows(
    name: str, clicks: list[str], boxes: list, is_row: list[bool], screen: int
) -> dict[str, float]:
    """``{name}_accuracy`` of ``clicks``, and the same over the list-row questions
    (``{name}_rows``) and the rest (``{name}_other``), with their counts (``…_n``)."""
    out = {f"{name}_accuracy": click_accuracy(clicks, boxes, (screen, screen))}
    for part_name, want in (("rows", True), ("other", False)):
        part = [i for i, r in enumerate(is_row) if r == want]
        if part:
            hits = [click_accuracy([clicks[i]], [boxes[i]], (screen, screen)) for i in part]
            out[f"{name}_{part_name}"] = sum(hits) / len(part)
            out[f"{name}_{part_name}_n"] = len(part)
    return out
