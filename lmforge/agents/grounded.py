"""Grounded clicks: a pointing action's point read from a *grounding question* built from the
step's thought — the element the thought names, asked about the current screenshot alone —
instead of from the episode's own context (a planner / grounder split inside one model, as
SeeAct and UGround pair a planner with a grounder; here both are the same agent model).

    click_target("'Backups' must be ticked; I tick it.")     # ("checkbox", "Backups")
    click_target("My last step was a mistake. Plan must be 'Pro'; I choose it.")
                                                              # ("option", "Pro")
    ids, pixels, grid = grounding_query(tokenizer, processor, "checkbox", "Backups", shot)
    # the pointer head at the last of ids ("click(") points into ``shot``

The thought is read against the expert's sentences (`lmforge.agents.thoughts.THOUGHTS`);
`TARGETS` says which element each clicking sentence names: the element kind of
`lmforge.agents.agent_data.screen_elements` and the slot that holds its label. A thought that
names no element (a scroll, a drag, free text) gives None and the policy points from its
own context as before.

Why: the trajectory-SFT agent (`bench/gui_agent.py`) fails most held-out episodes it fails by
*pointing* — its thought names the right box and the click lands a row off — while the same
model, asked the grounding question about the same screen, clicks inside 0.92–0.935 of
held-out-layout elements. Grounded, the same SFT agent goes from 0.34 to 0.45 held-out success
(400 episodes; BENCHMARKS.md, "GUI agent: grounded clicks").
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from lmforge.agents.agent_data import grounding_question, screen_elements
from lmforge.agents.thoughts import REFLECTION, SLOT, THOUGHTS
from lmforge.agents.widgets import Box, Window
from lmforge.vision.processor import ImageProcessor
from lmforge.vision.vlm_data import encode_prompt
from lmforge.vision.vlm_tasks import VQAExample

# clicking sentence → (element kind as `screen_elements` names it, the slot with its label)
TARGETS: dict[str, tuple[str, str]] = {
    "tab": ("tab", "tab"),
    "tick": ("checkbox", "label"),
    "untick": ("checkbox", "label"),
    "radio": ("option", "want"),
    "dd_open": ("dropdown", "label"),
    "dd_pick": ("option", "want"),
    "field": ("field", "field"),
    "submit_field": ("field", "label"),
    "press": ("button", "button"),
    "open_row": ("row", "label"),
    "dialog": ("close box", "title"),
}
CLICK_MODES = ("pointer", "grounded")  # where a pointing policy's clicks come from
THOUGHT_LINE = re.compile(r"Thought: (.*?)\nAction: ", re.S)


@lru_cache(maxsize=1)
def _sentences() -> list[tuple[str, re.Pattern]]:
    """Each `THOUGHTS` sentence as a full-match regex, its slots named groups."""
    out = []
    for name, template in THOUGHTS.items():
        parts = SLOT.split(template)
        regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+?)"
                        for i, p in enumerate(parts))  # fmt: skip
        out.append((name, re.compile(regex)))
    return out


def read_thought(thought: str) -> tuple[str, dict[str, str]] | None:
    """The expert's sentence ``thought`` is (after an optional `REFLECTION`) and its slots,
    or None when it is none of them."""
    body = thought.strip()
    body = body.removeprefix(REFLECTION.strip()).strip()
    for name, pattern in _sentences():
        m = pattern.fullmatch(body)
        if m is not None:
            return name, m.groupdict()
    return None


def click_target(thought: str) -> tuple[str, str] | None:
    """(element kind, label) the thought's click is about (`TARGETS`), or None when the
    thought names no element to click."""
    read = read_thought(thought)
    if read is None or read[0] not in TARGETS:
        return None
    kind, slot = TARGETS[read[0]]
    return kind, read[1][slot]


def response_target(text: str) -> tuple[str, str] | None:
    """`click_target` of a response's thought (``text`` up to at least ``Action: ``)."""
    m = THOUGHT_LINE.match(text.lstrip())
    return None if m is None else click_target(m.group(1))


def named_boxes(win: Window, text: str) -> list[Box]:
    """The boxes of the on-screen elements (`screen_elements`) of the kind and label that the
    response ``text``'s thought names (`response_target`) — where its grounded click should
    land; empty when it names none or none is on screen."""
    target = response_target(text)
    if target is None:
        return []
    return [e.box for e in screen_elements(win) if (e.kind, e.label) == target]


def grounding_query(
    tokenizer: Any, processor: ImageProcessor, kind: str, label: str, screenshot: np.ndarray
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The grounding chat of `lmforge.agents.agent_data.grounding_examples` for one element
    (the screenshot, then "Click on the {kind} '{label}'.") with the answer's ``click(``
    appended: the ids (the pointer's query is the last), ``pixel_values``, ``image_grid_thw``."""
    question = VQAExample([screenshot], grounding_question(kind, label), "", "grounding")
    ids, pixels, grid = encode_prompt(tokenizer, processor, question.messages()[:1], [screenshot])
    return ids + tokenizer.encode("click("), pixels, grid


__all__ = [
    "CLICK_MODES",
    "TARGETS",
    "click_target",
    "grounding_query",
    "named_boxes",
    "read_thought",
    "response_target",
]
