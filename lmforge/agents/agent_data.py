"""Training data for a GUI agent, as UI-TARS builds it (Qin et al. 2025 §4): perception
(dense captions of the elements, state QA), grounding (instruction → a click inside the
element), multi-step trajectories of the scripted expert with a thought per step, and
reflection pairs (an injected mistake, then the step that corrects it); and perception and
grounding on random screens (`lmforge.agents.random_screens`), which no layout prior answers.

This file is long because every kind of example and every pointer target (the element's box,
a list row's number tokens, zoomed crops) is built from the same screens, boxes and random
streams, which must stay consistent across the kinds (a held-out split's hash is pinned).

    data = make_agent_dataset(split="train", num_tasks=200, seed=0)
    data["grounding"][0].messages()   # [{"role": "user", …images, text}, {"role": "assistant", …}]
    encode_chat(tokenizer, processor, ex.messages(), ex.images)   # → lmforge's VLM SFT

Every example is a `lmforge.vision.vlm_tasks.VQAExample` (screenshots as uint8 arrays, a
question, the answer) — the sample type ``lmforge vlm sft`` trains on and `answer_questions`
evaluates, so the agent data plugs into the existing multimodal SFT (several images per
example are supported). Grounding can come as `ChatExample`s: several questions about one
screenshot in one chat, so one image encoding trains several answers. A trajectory step shows the last ``history`` screenshots (oldest
first, the current one last) and, as text, the instruction, the previous actions and the
last step's thought (`agent_prompt`); its answer is ``Thought: …\\nAction: …``. `write_examples` /
`read_examples` store a dataset as JSONL (Qwen-style messages) plus PNG screenshots.
`pointer_queries` gives an example's training queries for a pointer head (each coordinate
action with a known target box: where in the answer, on which screenshot, which box).
Two opt-in extras aimed at list rows (issue 18): kind "reading" (`reading_examples`: "What
does row 3 of the invoice list say?" → "invoice 17", "Which row … says 'invoice 17'?" →
"row 3") and grounding on ``zoom``× crops (`zoom_examples`, the second look of iterative
zoom-in; `lmforge.agents.grounding.point_clicks` takes it at test time). For matching the
question's number to the row (issue 18, session 12): `pointer_queries(…, row_target="number")`
aims a list-row query at the tokens showing the row's number (`number_box`), and
``row_screens`` adds row-only grounding on list-heavy random screens.

This module is long because the five kinds of data share one pass over the expert's
episodes and one example type, and splitting them would split
that pass.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lmforge.agents.actions import (
    ACTION_PREFIX,
    MAX_THOUGHT,
    format_action,
    format_response,
    parse_action,
    response_thought,
)
from lmforge.agents.env import GUIEnv, WindowController
from lmforge.agents.expert import ExpertStep, click, expert_step
from lmforge.agents.random_screens import KIND_WEIGHTS, random_window
from lmforge.agents.render import Glyph, glyph_centre, render_window, render_window_glyphs
from lmforge.agents.tasks import (
    Task,
    sample_task,
)
from lmforge.agents.widgets import (
    Box,
    Button,
    Checkbox,
    Dialog,
    Dropdown,
    Label,
    ListView,
    RadioGroup,
    ScrollPane,
    Tabs,
    TextField,
    Window,
    box_center,
    box_contains,
)
from lmforge.io import atomic_write_text
from lmforge.models.pointer_head import normalise_box
from lmforge.vision.vlm_data import PointerQuery, message_text
from lmforge.vision.vlm_tasks import VQAExample

LIST_HEAVY = {**KIND_WEIGHTS, "list": 6}  # reading screens: lists six times as likely
DROPDOWN_HEAVY = {**KIND_WEIGHTS, "dropdown": 8}  # option screens: dropdowns four times as likely
KINDS = ("perception", "state_qa", "grounding", "trajectory", "reflection", "reading")
# the mix when ``agent.kinds`` is not given (reading is opt-in)
DEFAULT_KINDS = ("perception", "state_qa", "grounding", "trajectory", "reflection")
MAX_HISTORY_ACTIONS = 6
POINTING_ACTIONS = ("click", "left_double", "right_single", "drag", "scroll")


@dataclass(frozen=True)
class Element:
    """A thing on screen a user could point at: kind, its text, its box."""

    kind: str
    label: str
    box: Box


def screen_elements(win: Window) -> list[Element]:
    """The shown, clickable elements of ``win``, topmost layer only (a dialog hides the
    window; an open dropdown's options come first)."""
    if win.dialog is not None:
        d = win.dialog
        return [Element("close box", d.label, d.close_box)] + [
            Element("button", b.label, b.box) for b in d.buttons
        ]
    out = []
    drop = win.open_dropdown()
    if drop is not None:
        out += [
            Element("option", o, b) for o, b in zip(drop.options, drop.option_boxes, strict=True)
        ]
    for w in win.walk(shown_only=True):
        if isinstance(w, (Button, TextField, Checkbox, Dropdown)):
            out.append(Element({"textfield": "field"}.get(w.kind, w.kind), w.label, w.box))
        elif isinstance(w, RadioGroup):
            out += [Element("option", o, b) for o, b in zip(w.options, w.option_boxes, strict=True)]
        elif isinstance(w, Tabs):
            out += [Element("tab", n, b) for n, b in zip(w.names, w.tab_boxes, strict=True)]
        elif isinstance(w, ListView):
            rows = range(w.offset, min(len(w.items), w.offset + w.visible))
            out += [Element("row", w.items[i], w.row_box(i)) for i in rows]
    return out


def describe_widget(win: Window, w) -> str | None:
    """One line of a dense caption for a shown widget (None for containers' pages)."""
    if isinstance(w, Label):
        return f"text '{w.label}'"
    if isinstance(w, Button):
        return f"button '{w.label}'"
    if isinstance(w, TextField):
        return f"field '{w.label}' " + (f"'{w.text}'" if w.text else "empty")
    if isinstance(w, Checkbox):
        return f"checkbox '{w.label}' " + ("ticked" if w.checked else "unticked")
    if isinstance(w, (RadioGroup, Dropdown)):
        return f"{'choice' if isinstance(w, RadioGroup) else 'dropdown'} '{w.label}' {w.value()}"
    if isinstance(w, ListView):
        return "list " + ", ".join(w.items[w.offset : w.offset + w.visible])
    if isinstance(w, Tabs):
        return "tabs " + ", ".join(w.names) + f"; {w.names[w.active]} open"
    if isinstance(w, ScrollPane):
        return "scrollable pane"
    if isinstance(w, Dialog):
        return f"message '{w.label}': {w.message}"
    return None


def dense_caption(win: Window) -> str:
    """Every shown widget, top to bottom, one line each."""
    lines = [f"window '{win.title}'"]
    lines += [d for w in win.walk(shown_only=True) if (d := describe_widget(win, w))]
    return "\n".join(lines)


def state_questions(win: Window) -> list[tuple[str, str]]:
    """(question, answer) pairs about the shown widgets' state."""
    qa = [("Is a message box open?", "yes" if win.dialog is not None else "no")]
    for w in win.walk(shown_only=True):
        if isinstance(w, Checkbox):
            qa.append((f"Is '{w.label}' ticked?", "yes" if w.checked else "no"))
        elif isinstance(w, (RadioGroup, Dropdown)):
            qa.append((f"What is {w.label} set to?", w.value()))
        elif isinstance(w, TextField):
            qa.append((f"What is in the {w.label} field?", w.text or "empty"))
        elif isinstance(w, Tabs):
            qa.append(("Which tab is open?", w.names[w.active]))
    return qa


def agent_prompt(
    instruction: str, previous: Sequence[str], num_images: int, thoughts: Sequence[str] = ()
) -> str:
    """The text of a trajectory step's user turn: the instruction, the previous actions
    (the last `MAX_HISTORY_ACTIONS`), the last step's thought (UI-TARS keeps its earlier
    thoughts in context: what it meant to do — which list it opened — is not always on the
    screen), and what the screenshots are."""
    recent = list(previous)[-MAX_HISTORY_ACTIONS:]
    history = "; ".join(recent) if recent else "none"
    last = thoughts[-1] if thoughts and thoughts[-1] else "none"
    return (f"Task: {instruction}\nPrevious actions: {history}\nLast thought: {last}\n"
            f"The last {num_images} screenshot(s), newest last. What next?")  # fmt: skip


@dataclass
class TrajectoryStep:
    """One step: the screenshot it saw, the response, whether it is an injected mistake or
    the correction that follows one, and the expert's target box."""

    screenshot: np.ndarray
    response: str
    action: str
    target_box: Box | None
    mistake: bool = False
    correction: bool = False
    drop_box: Box | None = None  # a drag's second point (`ExpertStep.drop_box`)


@dataclass
class Trajectory:
    task: Task
    steps: list[TrajectoryStep] = field(default_factory=list)
    success: bool = False


def mistake_step(
    task: Task, win: Window, rng: random.Random, drag: bool = False
) -> tuple[ExpertStep, str] | None:
    """A plausible wrong, non-terminal click that makes things worse — untick / tick a box
    that was right, change a radio choice that was right, switch to a tab or open a
    dropdown the expert would not — and the id of the widget it disturbs; None if none fits."""
    if win.dialog is not None or win.open_dropdown() is not None:
        return None
    expected, values, options = task.expected_values(), win.values(), []
    right = lambda w: values.get(w.wid) == expected.get(w.wid)  # noqa: E731
    for w in win.walk(shown_only=True):
        if isinstance(w, Checkbox) and right(w):
            options.append((click(w.mark_box, "I toggle it.", w.label), w.wid))
        elif isinstance(w, RadioGroup) and right(w):
            for i, o in enumerate(w.options):
                if i != w.selected:
                    options.append((click(w.option_boxes[i], "I choose it.", o), w.wid))
        elif isinstance(w, Tabs):
            for i, b in enumerate(w.tab_boxes):
                if i != w.active:
                    options.append((click(b, "I open the tab.", w.names[i]), w.wid))
        elif isinstance(w, Dropdown):
            options.append((click(w.box, "I open the list.", w.label), w.wid))
    planned = expert_step(task, win, drag=drag).action
    options = [(step, wid) for step, wid in options if step.action != planned]
    return rng.choice(options) if options else None


def reflective(thought: str) -> str:
    """A correction's thought: notice the mistake, then the expert's reasoning."""
    text = "My last step was a mistake. " + thought
    return text if len(text) <= MAX_THOUGHT else ("Mistake. " + thought)[:MAX_THOUGHT]


def expert_trajectory(
    task: Task,
    max_steps: int = 30,
    mistake_at: int | None = None,
    seed: int = 0,
    drag: bool = False,
) -> Trajectory:
    """Roll the expert out on ``task``; with ``mistake_at`` = t, a mistake is injected before
    expert step t and the next step is marked as its correction (reflection). ``drag``: the
    expert drags far rows into view (`lmforge.agents.expert.drag_step`)."""
    env = GUIEnv(width=task.window.width, height=task.window.height, max_steps=max_steps)
    obs, _ = env.reset(options={"task": task})
    traj, rng, prefer, done = Trajectory(task), random.Random(seed), None, False
    while not done:
        at = len(traj.steps) == mistake_at
        mistake = mistake_step(task, env.window, rng, drag) if at else None
        if mistake is not None:
            step, prefer = mistake
        else:
            step = expert_step(task, env.window, prefer, drag)
        thought = step.thought
        if prefer is not None and mistake is None:
            thought, prefer = reflective(thought), None
        correction = bool(traj.steps) and traj.steps[-1].mistake and mistake is None
        text = format_response(thought, step.action)
        traj.steps.append(TrajectoryStep(obs, text, format_action(step.action), step.target_box,
                                         mistake=mistake is not None, correction=correction,
                                         drop_box=step.drop_box))  # fmt: skip
        obs, reward, terminated, truncated, _ = env.step(step.action)
        done = terminated or truncated
        traj.success = bool(reward)
    return traj


def trajectory_examples(traj: Trajectory, history: int = 2) -> list[VQAExample]:
    """One example per expert step (injected mistakes are history, never targets): the
    last ``history`` screenshots, the prompt, the response. Corrections are "reflection"."""
    out = []
    for t, step in enumerate(traj.steps):
        if step.mistake:
            continue
        images = [s.screenshot for s in traj.steps[max(0, t - history + 1) : t + 1]]
        previous = [s.action for s in traj.steps[:t]]
        thoughts = [response_thought(s.response) for s in traj.steps[:t]]
        question = agent_prompt(traj.task.instruction, previous, len(images), thoughts)
        kind = "reflection" if step.correction else "trajectory"
        meta = {"template": traj.task.template, "step": t, "target_box": step.target_box}
        if step.drop_box is not None:
            meta["drop_box"] = step.drop_box
        out.append(VQAExample(images, question, step.response, kind, meta))
    return out


def perception_examples(win: Window, rng: random.Random, questions: int = 2) -> list[VQAExample]:
    """A dense caption of the screen and ``questions`` state-QA pairs."""
    image = np.asarray(render_window(win))
    out = [VQAExample([image], "Describe the screen.", dense_caption(win), "perception")]
    qa = state_questions(win)
    for q, a in rng.sample(qa, min(questions, len(qa))):
        out.append(VQAExample([image], q, a, "state_qa"))
    return out


@dataclass
class ChatExample(VQAExample):
    """A `VQAExample` with further (question, answer) ``turns`` about the same images: the
    chat continues after the first answer. One image encoding then trains several answers
    (the images, ~64 tokens each, dominate a one-question example's cost), and the first
    turn alone is still an ordinary example (`answer_questions` asks only it)."""

    turns: list[tuple[str, str]] = field(default_factory=list)
    question_first: bool = False  # the first question before the images, not after

    def messages(self) -> list[dict]:
        out = super().messages()
        if self.question_first:
            content = out[0]["content"]
            out[0] = {"role": "user", "content": content[-1:] + content[:-1]}
        for q, a in self.turns:
            out.append({"role": "user", "content": [{"type": "text", "text": q}]})
            out.append({"role": "assistant", "content": a})
        return out


def shift_down(image: np.ndarray, dy: int) -> np.ndarray:
    """``image`` moved down by ``dy`` pixels, the rows uncovered at the top filled with its
    bottom-right pixel's colour (the window background)."""
    out = np.empty_like(image)
    out[:] = image[-1, -1]
    out[dy:] = image[: image.shape[0] - dy]
    return out


def covered(win: Window, e: Element) -> bool:
    """Whether an open dropdown's options lie over the centre of element ``e`` (a click there
    would pick the option)."""
    drop = win.open_dropdown()
    if drop is None or e.box in drop.option_boxes:
        return False
    return any(box_contains(b, *box_center(e.box)) for b in drop.option_boxes)


def grounding_question(kind: str, label: str) -> str:
    """The grounding question about one element: "Click on the {kind} '{label}'."."""
    return f"Click on the {kind} '{label}'."


def grounding_examples(
    win: Window,
    rng: random.Random,
    count: int = 3,
    turns: int = 1,
    shift: int = 0,
    skip_covered: bool = False,
    question_first: bool = False,
    only: str | None = None,
) -> list[VQAExample]:
    """``count`` (instruction → click at the centre of the element) pairs on the screen of
    ``win`` (all its elements for ``count`` ≤ 0), as chats of up to ``turns`` questions each
    (`ChatExample`; ``turns`` = 1: one `VQAExample` per pair). ``meta["target_boxes"]``
    holds every turn's box, ``meta["target_box"]`` the first's. ``shift`` > 0 moves the
    screenshot (and the targets) down by a random 0 … ``shift`` pixels that keep every
    element on screen: the same layout at many heights, so a fixed row per layout no longer
    answers (augmentation against memorising the training layouts' geometry).
    ``skip_covered`` leaves out elements an open dropdown hides (`covered`);
    ``question_first`` puts each chat's first question before the screenshot (the image
    tokens can then attend to the question in the language model). ``only``: ask only about
    elements of this kind (e.g. ``"row"``)."""
    image = np.asarray(render_window(win))
    elements = screen_elements(win)
    if only is not None:
        elements = [e for e in elements if e.kind == only]
    if skip_covered:
        elements = [e for e in elements if not covered(win, e)]
    picked = rng.sample(elements, len(elements) if count <= 0 else min(count, len(elements)))
    dy = 0
    if shift > 0 and elements:
        room = win.height - max(e.box[3] for e in elements)
        dy = rng.randint(0, max(0, min(shift, room)))
        image = shift_down(image, dy)
    pairs = []
    for e in picked:
        box = (e.box[0], e.box[1] + dy, e.box[2], e.box[3] + dy)
        x, y = box_center(box)
        pairs.append((grounding_question(e.kind, e.label), f"click({x},{y})", box))
    out: list[VQAExample] = []
    for start in range(0, len(pairs), max(1, turns)):
        chat = pairs[start : start + max(1, turns)]
        (q, a, box), rest = chat[0], chat[1:]
        meta = {"target_box": box, "target_boxes": [b for _, _, b in chat]}
        if dy:
            meta["shift"] = dy
        if rest or question_first:
            more = [(q2, a2) for q2, a2, _ in rest]
            out.append(ChatExample([image], q, a, "grounding", meta, more, question_first))
        else:
            out.append(VQAExample([image], q, a, "grounding", meta))
    return out


def list_name(lv: ListView) -> str:
    """What a list holds, from its items' shared first word ("invoice 7", … → "invoice")."""
    heads = {item.rsplit(" ", 1)[0] for item in lv.items}
    return heads.pop() if len(heads) == 1 else "item"


def reading_examples(win: Window, rng: random.Random, turns: int = 8) -> list[VQAExample]:
    """Questions that can only be answered by reading a list's rows, on the screen of ``win``:
    for every visible row k (counted from 1 at the list's top) of every shown list, "What
    does row k of the invoice list say?" → its item ("invoice 17"), and, in other chats,
    "Which row of the invoice list says 'invoice 17'?" → "row 3" (one chat never asks both
    about a row: the first answer would give the second away). Shuffled, in chats of up to
    ``turns`` questions (one image encoding), kind "reading". Dense supervision of the
    items' text — the digits that tell one row from another — which a grounding question on
    a row (one pointer target among the list's 4–5 rows) and a caption (all items at once)
    give only weakly. Nothing when a message box hides the window or two shown lists hold
    the same kind of item (the name would not say which list); rows an open dropdown covers
    are left out. No click answers, so no pointer queries (`pointer_queries`)."""
    if win.dialog is not None:
        return []
    lists = [w for w in win.walk(shown_only=True) if isinstance(w, ListView)]
    names = [list_name(lv) for lv in lists]
    drop = win.open_dropdown()
    hidden = drop.option_boxes if drop is not None else []
    what, which = [], []
    for lv, name in zip(lists, names, strict=True):
        if names.count(name) > 1:
            continue
        for k, i in enumerate(range(lv.offset, min(len(lv.items), lv.offset + lv.visible)), 1):
            if any(box_contains(b, *box_center(lv.row_box(i))) for b in hidden):
                continue
            item = lv.items[i]
            what.append((f"What does row {k} of the {name} list say?", item))
            which.append((f"Which row of the {name} list says '{item}'?", f"row {k}"))
    if not what:
        return []
    image = np.asarray(render_window(win))
    out: list[VQAExample] = []
    for pairs in (what, which):
        rng.shuffle(pairs)
        for start in range(0, len(pairs), max(1, turns)):
            (q, a), *rest = pairs[start : start + max(1, turns)]
            out.append(ChatExample([image], q, a, "reading", {}, rest) if rest
                       else VQAExample([image], q, a, "reading", {}))  # fmt: skip
    return out


def zoom_box(point: tuple[float, float], screen: tuple[int, int], zoom: int = 2) -> Box:
    """The crop of a second, ``zoom``× closer look at ``point`` (x, y px): ``screen`` /
    ``zoom`` on a side, centred on the point and moved to lie inside the screen."""
    w, h = screen[0] // zoom, screen[1] // zoom
    x0 = min(max(0, round(point[0] - w / 2)), screen[0] - w)
    y0 = min(max(0, round(point[1] - h / 2)), screen[1] - h)
    return (x0, y0, x0 + w, y0 + h)


def zoom_image(image: np.ndarray, crop: Box, zoom: int = 2) -> np.ndarray:
    """``image``'s ``crop`` enlarged ``zoom``× (each pixel repeated: crisp glyphs, no new
    detail), so a screen-sized crop of a screen-sized image stays screen-sized."""
    part = image[crop[1] : crop[3], crop[0] : crop[2]]
    return np.ascontiguousarray(part.repeat(zoom, axis=0).repeat(zoom, axis=1))


def zoomed_box(box: Box, crop: Box, zoom: int = 2) -> Box | None:
    """``box`` in the pixels of the zoomed ``crop`` (`zoom_image`), cut to it; None when the
    box's centre lies outside the crop."""
    if not box_contains(crop, *box_center(box)):
        return None
    x0, y0 = max(box[0], crop[0]), max(box[1], crop[1])
    x1, y1 = min(box[2], crop[2]), min(box[3], crop[3])
    return ((x0 - crop[0]) * zoom, (y0 - crop[1]) * zoom,
            (x1 - crop[0]) * zoom, (y1 - crop[1]) * zoom)  # fmt: skip


def zoom_examples(
    win: Window,
    rng: random.Random,
    crops: int = 1,
    turns: int = 8,
    zoom: int = 2,
    jitter: int = 24,
) -> list[VQAExample]:
    """Grounding on a closer look (iterative zoom-in for GUI grounding): ``crops`` times, a
    crop of 1/``zoom`` of the screen (`zoom_box`) around a random element's centre moved by
    up to ± ``jitter`` px (where a first, coarse click may land), enlarged ``zoom``×
    (`zoom_image`); then the usual "Click on the row 'invoice 7'." questions about the
    elements whose centre the crop holds, answered in the zoomed picture's pixels, in chats
    of up to ``turns`` (kind "grounding", ``meta["zoom"]`` = the crop). A list row 11–12 px
    tall spans 22–24 px there, so one 8-px token row lies inside it. Elements an open
    dropdown covers are skipped."""
    elements = [e for e in screen_elements(win) if not covered(win, e)]
    if not elements:
        return []
    image = np.asarray(render_window(win))
    screen = (win.width, win.height)
    out: list[VQAExample] = []
    for _ in range(crops):
        x, y = box_center(rng.choice(elements).box)
        crop = zoom_box((x + rng.randint(-jitter, jitter), y + rng.randint(-jitter, jitter)),
                        screen, zoom)  # fmt: skip
        inside = [(e, b) for e in elements if (b := zoomed_box(e.box, crop, zoom)) is not None]
        rng.shuffle(inside)
        big = zoom_image(image, crop, zoom)
        for start in range(0, len(inside), max(1, turns)):
            chat = []
            for e, b in inside[start : start + max(1, turns)]:
                cx, cy = box_center(b)
                chat.append((grounding_question(e.kind, e.label), f"click({cx},{cy})", b))
            (q, a, _), rest = chat[0], chat[1:]
            meta = {"target_box": chat[0][2], "target_boxes": [b for _, _, b in chat],
                    "zoom": crop}  # fmt: skip
            more = [(q2, a2) for q2, a2, _ in rest]
            out.append(ChatExample([big], q, a, "grounding", meta, more) if more
                       else VQAExample([big], q, a, "grounding", meta))  # fmt: skip
    return out


def make_agent_dataset(
    split: str = "train",
    num_tasks: int = 100,
    seed: int = 0,
    history: int = 2,
    mistake_rate: float = 0.3,
    width: int = 128,
    height: int = 128,
    grounding_count: int = 3,
    grounding_turns: int = 1,
    grounding_shift: int = 0,
    random_screens: int = 0,
    question_first: bool = False,
    reading_screens: int = 0,
    zoom: int = 0,
    zoom_crops: int = 1,
    glyphs: bool = False,
    row_screens: int = 0,
    expert_drags: bool = False,
    composed: bool = False,
    clauses: float = 0.0,
    option_screens: int = 0,
    messages: float = 0.0,
) -> dict[str, list[VQAExample]]:
    """All five kinds of examples from ``num_tasks`` tasks of ``split``: perception and
    grounding on every state the expert visits (``grounding_count`` elements per state in
    chats of ``grounding_turns`` questions, moved down by up to ``grounding_shift`` px,
    `grounding_examples`), trajectories, and
    reflections from a mistake injected in a ``mistake_rate`` share of the episodes; plus
    perception and grounding on ``random_screens`` windows of random widgets
    (`random_window`, template "random"), where only reading the screen tells what is
    where. ``question_first``: grounding chats ask their first question before the image.
    Reading (`reading_examples`) comes from every expert state and random screen that shows
    a list, plus ``reading_screens`` random windows drawn with lists six times as likely
    (`LIST_HEAVY`), in chats of ``grounding_turns``; it draws from its own random stream,
    so the other kinds (and the held-out questions) are the same with or without it.
    ``zoom`` ≥ 2 adds, on every expert state and random screen, ``zoom_crops`` grounding
    chats on a ``zoom``× closer look (`zoom_examples`; their own random stream too).
    ``glyphs``: every example drawn from a window's screenshot (all but trajectories and
    reflections) keeps its characters' boxes in ``meta["glyphs"]`` (`attach_glyphs`, for
    the glyph objective `lmforge.agents.glyph`); nothing else changes. ``row_screens``:
    grounding on every visible list row (and nothing else) of this many list-heavy random
    windows (`LIST_HEAVY`), in chats of ``grounding_turns`` — "which row shows 17" asked
    about rows that differ only in their numbers, on one image; their own random stream.
    ``expert_drags``: the expert drags far rows into view (`lmforge.agents.expert.drag_step`;
    its trajectories teach ``drag(…)``, both points with pointer targets) instead of
    scrolling three times or more. ``composed``: the training split's tasks come from the
    training-only composed templates too (`lmforge.agents.task_templates`); ``clauses`` = p:
    a share p of them are clause tasks (`lmforge.agents.task_clauses`); ``messages`` = q: a
    share q switch their message (`lmforge.agents.tasks.sample_task`). ``option_screens``:
    grounding on the options of the open dropdown (and on the dropdowns it leaves uncovered)
    of this many dropdown-heavy random windows with one dropdown open (`DROPDOWN_HEAVY`), in
    chats of ``grounding_turns``; their own random stream. Why: an open list's options are a
    few questions per dropdown task, and the agent's held-out grounding of them was 0.56
    (dropdowns 0.79; BENCHMARKS.md, issue 18 session 26)."""
    data: dict[str, list[VQAExample]] = {k: [] for k in KINDS}
    rng = random.Random(f"agent-data/{split}/{seed}")
    read_rng = random.Random(f"agent-reading/{split}/{seed}")
    zoom_rng = random.Random(f"agent-zoom/{split}/{seed}")
    turns = max(1, grounding_turns)
    for i in range(num_tasks):
        task = sample_task(seed * 1_000_003 + i, split, width=width, height=height,
                           composed=composed, clauses=clauses, messages=messages)  # fmt: skip
        clean = expert_trajectory(task, drag=expert_drags)
        mistake_at = rng.randrange(len(clean.steps)) if rng.random() < mistake_rate else None
        traj = (
            expert_trajectory(task, mistake_at=mistake_at, seed=i, drag=expert_drags)
            if mistake_at is not None
            else clean
        )
        for ex in trajectory_examples(traj, history):
            data[ex.task].append(ex)
        win = task.fresh_window()
        for step in clean.steps:
            grounding = grounding_examples(
                win, rng, grounding_count, grounding_turns, grounding_shift,
                question_first=question_first,
            )  # fmt: skip
            reading = reading_examples(win, read_rng, turns)
            if zoom >= 2:
                grounding += zoom_examples(win, zoom_rng, zoom_crops, turns, zoom)
            made = perception_examples(win, rng) + grounding + reading
            if glyphs:
                attach_glyphs(made, render_window_glyphs(win)[1])
            for ex in made:
                ex.meta["template"] = task.template
                data[ex.task].append(ex)
            WindowController(win).apply(parse_action(step.action))
    for j in range(random_screens):
        win = random_window(random.Random(f"agent-screens/{split}/{seed}/{j}"), width, height)
        grounding = grounding_examples(win, rng, grounding_count, grounding_turns,
                                       grounding_shift, True, question_first)  # fmt: skip
        if zoom >= 2:
            grounding += zoom_examples(win, zoom_rng, zoom_crops, turns, zoom)
        made = perception_examples(win, rng) + grounding + reading_examples(win, read_rng, turns)
        if glyphs:
            attach_glyphs(made, render_window_glyphs(win)[1])
        for ex in made:
            ex.meta["template"] = "random"
            data[ex.task].append(ex)
    for j in range(reading_screens):
        r = random.Random(f"agent-reading-screens/{split}/{seed}/{j}")
        win = random_window(r, width, height, weights=LIST_HEAVY)
        made = reading_examples(win, read_rng, turns)
        if glyphs:
            attach_glyphs(made, render_window_glyphs(win)[1])
        for ex in made:
            ex.meta["template"] = "random"
            data[ex.task].append(ex)
    row_rng = random.Random(f"agent-row-questions/{split}/{seed}")
    for j in range(row_screens):
        r = random.Random(f"agent-row-screens/{split}/{seed}/{j}")
        win = random_window(r, width, height, weights=LIST_HEAVY)
        made = grounding_examples(win, row_rng, 0, grounding_turns, 0, True, question_first,
                                  only="row")  # fmt: skip
        if glyphs:
            attach_glyphs(made, render_window_glyphs(win)[1])
        for ex in made:
            ex.meta["template"] = "random"
            data[ex.task].append(ex)
    option_rng = random.Random(f"agent-option-questions/{split}/{seed}")
    for j in range(option_screens):
        r = random.Random(f"agent-option-screens/{split}/{seed}/{j}")
        win = random_window(r, width, height, dropdown_rate=1.0, weights=DROPDOWN_HEAVY)
        made = [ex for kind in ("option", "dropdown")
                for ex in grounding_examples(win, option_rng, 0, grounding_turns, 0, True,
                                             question_first, only=kind)]  # fmt: skip
        if glyphs:
            attach_glyphs(made, render_window_glyphs(win)[1])
        for ex in made:
            ex.meta["template"] = "random"
            data[ex.task].append(ex)
    return data


def attach_glyphs(examples: Sequence[VQAExample], glyphs: Sequence[Glyph]) -> None:
    """Set ``meta["glyphs"]`` = [the glyphs of its one image] on each of ``examples``, all
    drawn from the one window whose screenshot's glyphs (`render_window_glyphs`) are
    ``glyphs``: moved down by ``meta["shift"]`` or into the zoomed crop ``meta["zoom"]``
    as the example's image was."""
    for ex in examples:
        if len(ex.images) != 1:
            continue
        if "zoom" in ex.meta:  # those centred in the crop, as its element boxes (`zoomed_box`)
            crop = ex.meta["zoom"]
            zoom = ex.images[0].shape[1] // (crop[2] - crop[0])
            moved = [(g.char, zoomed_box(g.box, crop, zoom)) for g in glyphs]
            own = [Glyph(char, box) for char, box in moved if box is not None]
        elif dy := ex.meta.get("shift"):
            own = [
                Glyph(g.char, (g.box[0], g.box[1] + dy, g.box[2], g.box[3] + dy)) for g in glyphs
            ]
        else:
            own = list(glyphs)
        ex.meta["glyphs"] = [own]


def pointer_prefix(text: str) -> tuple[str, int] | None:
    """``(name, end)`` when ``text`` — a ``Thought: …\\nAction: …`` response (its action after
    the first line break, as `parse_response` reads it; also one still being decoded) or a
    bare action (a grounding answer) — has begun a coordinate action ``name(``
    (`POINTING_ACTIONS`); ``end`` is the index just past the ``(``, where a pointer query
    sits. None when the action points nowhere (typing, keys, finished) or is not one."""
    line = text.find("\n")
    if line < 0:
        start = 0
    elif text.startswith(ACTION_PREFIX, line):
        start = line + len(ACTION_PREFIX)
    else:
        return None
    head, paren, _ = text[start:].partition("(")
    if not paren or head not in POINTING_ACTIONS:
        return None
    return head, start + len(head) + 1


ROW_QUESTION = "Click on the row "  # `grounding_examples`' question on a list row
ROW_TARGETS = ("box", "number", "last_digit")


def box_glyphs(box: Box, glyphs: Sequence[Glyph]) -> list[Glyph]:
    """The glyphs whose centre lies in the px ``box``, left to right (one line of text)."""
    return sorted((g for g in glyphs if box_contains(box, *glyph_centre(g))),
                  key=lambda g: glyph_centre(g)[0])  # fmt: skip


def number_box(box: Box, glyphs: Sequence[Glyph], last_only: bool = False) -> Box | None:
    """The pointer target that names a list row by its number: of the glyphs whose centre
    lies in the row's ``box`` (drawn left to right), the trailing run of digits — the item
    number of "invoice 17" — as the px box ``(min cx, min cy, max cx + ε, max cy + ε)`` over
    their centres (ε = 0.01 px), so `pointer_target` puts the mass on the tokens whose cells
    hold a digit's centre (the cells ``[8k, 8k + 8)`` the glyph head reads it in,
    `lmforge.agents.glyph`; the cells between the first and last digit's too).
    ``last_only``: the last digit alone — one token, the one whose causal context (the
    image tokens before it in raster order) holds the whole number. None when the row shows
    no trailing digits (the caller keeps the row's box)."""
    inside = box_glyphs(box, glyphs)
    digits: list[Glyph] = []
    for g in reversed(inside):
        if not g.char.isdigit():
            break
        digits.append(g)
    if not digits:
        return None
    digits = digits[:1] if last_only else digits
    xs = [glyph_centre(g)[0] for g in digits]
    ys = [glyph_centre(g)[1] for g in digits]
    return (min(xs), min(ys), max(xs) + 0.01, max(ys) + 0.01)


def pointer_queries(
    example: VQAExample, screen: tuple[int, int], row_target: str = "box"
) -> list[PointerQuery]:
    """The pointer head's training queries of ``example`` (`lmforge.vision.vlm_data.
    PointerQuery`, for ``encode_chat(…, pointers=…)``): one per assistant turn whose answer is
    a coordinate action (`pointer_prefix`) and whose target box is known — grounding:
    ``meta["target_boxes"]`` (one per turn; ``meta["target_box"]`` for a one-question
    example), trajectory and reflection steps: the step's ``meta["target_box"]`` (the
    expert's box for the action the answer takes; a reflection's is the correcting step's).
    The query is the token ending with the action's ``(``; its image is the example's last
    (the current screenshot: trajectory steps show the history oldest first); its box is
    normalised by ``screen`` (width, height). Turns without a box are skipped, so perception
    and state QA give none. A drag's first point targets the step's box (the scrollbar's
    thumb); its second, queried by the ``,`` after ``x1,y1``, the step's ``meta["drop_box"]``
    when the example has one (the expert's drags).
    ``row_target="number"``: a list-row grounding turn ("Click on the row 'invoice 17'.") of
    an example with glyphs (``meta["glyphs"]``) targets only the tokens showing the row's
    number (`number_box`) instead of the whole row: the row's other ≈ 26 tokens ("invoice",
    blank) look alike in every row, and a target spread over them teaches the pointer to find
    the list, not the row (issue 18); ``"last_digit"``: only the token of its last digit."""
    if row_target not in ROW_TARGETS:
        raise ValueError(f"row_target={row_target!r}: choose one of {ROW_TARGETS}")
    messages = example.messages()
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    meta = example.meta or {}
    boxes = meta.get("target_boxes")
    if boxes is None:
        boxes = [meta.get("target_box")] + [None] * (len(turns) - 1)
    if len(boxes) != len(turns):
        raise ValueError(f"{len(boxes)} target boxes for {len(turns)} assistant turns")
    glyphs = (meta.get("glyphs") or [None])[-1] if row_target != "box" else None
    out = []
    for i, box in zip(turns, boxes, strict=True):
        hit = pointer_prefix(message_text(messages[i]))
        if box is not None and hit is not None:
            if glyphs and i > 0 and message_text(messages[i - 1]).startswith(ROW_QUESTION):
                box = number_box(box, glyphs, row_target == "last_digit") or box
            image = len(example.images) - 1
            out.append(PointerQuery(i, hit[1], image, normalise_box(box, screen)))
            drop = meta.get("drop_box") if len(turns) == 1 else None
            if hit[0] == "drag" and drop is not None:
                text = message_text(messages[i])
                second = text.find(",", text.find(",", hit[1]) + 1) + 1  # past "x1,y1,"
                if second > hit[1]:
                    out.append(PointerQuery(i, second, image, normalise_box(drop, screen)))
    return out


def write_examples(path: str | Path, examples: Sequence[VQAExample]) -> None:
    """``examples.jsonl`` (Qwen-style messages with image file names, task, meta) and the
    screenshots as PNGs under ``images/`` in folder ``path``."""
    root = Path(path)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate(examples):
        names = [f"images/{i:06d}_{k}.png" for k in range(len(ex.images))]
        for name, image in zip(names, ex.images, strict=True):
            Image.fromarray(image).save(root / name)
        lines.append(json.dumps({"images": names, "question": ex.question, "answer": ex.answer,
                                 "task": ex.task, "messages": ex.messages(),
                                 "meta": {k: v for k, v in ex.meta.items() if k != "glyphs"},
                                 "turns": getattr(ex, "turns", []),
                                 "question_first": getattr(ex, "question_first", False)}))  # fmt: skip
    atomic_write_text(root / "examples.jsonl", "\n".join(lines) + "\n")


def read_examples(path: str | Path) -> list[VQAExample]:
    """The examples `write_examples` stored in folder ``path``."""
    root, out = Path(path), []
    for n, line in enumerate((root / "examples.jsonl").read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            images = [np.asarray(Image.open(root / name).convert("RGB")) for name in row["images"]]
            meta = dict(row["meta"])
            for key in ("target_box", "drop_box"):
                if meta.get(key):
                    meta[key] = tuple(meta[key])
            if "target_boxes" in meta:
                meta["target_boxes"] = [tuple(b) for b in meta["target_boxes"]]
            args = (images, row["question"], row["answer"], row["task"], meta)
            turns = [tuple(t) for t in row.get("turns", [])]
            first = bool(row.get("question_first", False))
            out.append(ChatExample(*args, turns, first) if turns or first else VQAExample(*args))
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{root / 'examples.jsonl'} line {n}: {exc}") from exc
    return out


__all__ = [
    "DEFAULT_KINDS",
    "DROPDOWN_HEAVY",
    "KINDS",
    "LIST_HEAVY",
    "MAX_HISTORY_ACTIONS",
    "POINTING_ACTIONS",
    "ROW_QUESTION",
    "ROW_TARGETS",
    "ChatExample",
    "Element",
    "Trajectory",
    "TrajectoryStep",
    "agent_prompt",
    "attach_glyphs",
    "box_glyphs",
    "covered",
    "dense_caption",
    "describe_widget",
    "expert_trajectory",
    "grounding_examples",
    "grounding_question",
    "list_name",
    "make_agent_dataset",
    "mistake_step",
    "number_box",
    "perception_examples",
    "pointer_prefix",
    "pointer_queries",
    "read_examples",
    "reading_examples",
    "reflective",
    "screen_elements",
    "shift_down",
    "state_questions",
    "trajectory_examples",
    "write_examples",
    "zoom_box",
    "zoom_examples",
    "zoom_image",
    "zoomed_box",
]
