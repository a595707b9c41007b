"""GUI tasks: templates that build a randomised window and an instruction, with a
programmatic success check; train / held-out splits of both layouts and templates.

    task = sample_task(seed=3, split="heldout")
    task.instruction          # "Set Size to Large, then press Save"
    task_success(task, win)   # after an episode: the end state is the asked-for one

A task says which values the end state must hold (``goal``: widget id → value; every other
widget must keep its initial value — a stray tick fails the task) and which terminal event
must end the episode (``final``: pressing a window button, opening a list item, submitting a
text field with Enter, or ``finished()``). A layout is a (theme, arrangement) pair; the
held-out layouts are the pairs with (theme + arrangement) % 4 == 3, never drawn for training.
The arrangement orders the widgets (buttons first or last, a heading, a distractor) and sets
the geometry ranges; labels, values and sizes are drawn from the seed. The templates
themselves are in `lmforge.agents.task_templates`; the held-out splits draw only the ten of
`TEMPLATES`, the training split also the composed ones when asked (``composed``).
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass, field, replace
from typing import Any

from lmforge.agents.layout import layout_window
from lmforge.agents.render import THEMES
from lmforge.agents.task_clauses import CLAUSE_DIALOG_TEMPLATES, CLAUSE_TEMPLATES, CLAUSE_TITLES
from lmforge.agents.task_templates import (
    COMPOSED_TEMPLATES,
    COMPOSED_TITLES,
    DIALOG_TEMPLATES,
    DIALOGS,
    HELDOUT_TEMPLATES,
    TEMPLATES,
    TITLES,
    TRAIN_TEMPLATES,
)
from lmforge.agents.widgets import (
    Button,
    Dialog,
    Geometry,
    Label,
    Widget,
    Window,
)

ARRANGEMENTS = 4
LAYOUTS = [(t, a) for t in range(len(THEMES)) for a in range(ARRANGEMENTS)]
HELDOUT_LAYOUTS = [(t, a) for t, a in LAYOUTS if (t + a) % 4 == 3]
TRAIN_LAYOUTS = [la for la in LAYOUTS if la not in HELDOUT_LAYOUTS]
SPLITS = ("train", "heldout_layout", "heldout_template", "heldout")
BUILDERS = {**TEMPLATES, **COMPOSED_TEMPLATES, **CLAUSE_TEMPLATES}  # every template by name
WINDOW_TITLES = {**TITLES, **COMPOSED_TITLES, **CLAUSE_TITLES}
UNDER_A_MESSAGE = (*DIALOG_TEMPLATES, *CLAUSE_DIALOG_TEMPLATES)  # windows that open under one


@dataclass
class Task:
    """One task: the initial window, the instruction, what the end state must hold."""

    template: str
    instruction: str
    window: Window
    goal: dict[str, Any]
    final: tuple[str, str]  # (event kind, target): press/open/submit/finished
    layout: tuple[int, int] = (0, 0)
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def fresh_window(self) -> Window:
        """A copy of the initial window to act on."""
        return copy.deepcopy(self.window)

    def expected_values(self) -> dict[str, Any]:
        """Every value widget's required end value: the goal, else the initial value."""
        return {**self.window.values(), **self.goal}


def goal_progress(task: Task, window: Window) -> float:
    """The share of the task's goal values ``window`` holds (0 for a task without any)."""
    values = window.values()
    return (
        sum(values.get(k) == v for k, v in task.goal.items()) / len(task.goal) if task.goal else 0.0
    )


def task_success(task: Task, window: Window) -> bool:
    """The end state is right: the last event is the task's final event and every value is
    the expected one (goal values reached, nothing else changed)."""
    last = window.events[-1] if window.events else None
    return last == task.final and window.values() == task.expected_values()


def terminal(event: tuple[str, str]) -> bool:
    """Whether an event ends the episode."""
    return event[0] in ("press", "open", "submit", "finished", "call_user")


def _arrange(rng: random.Random, arrangement: int, body: list[Widget], buttons: list[Widget]):
    """Order body and buttons by arrangement: 0 body/buttons, 1 buttons on top, 2 a heading,
    3 a heading and buttons on top."""
    head = [Label("heading", rng.choice(["Please fill in:", "Settings", "Details"]))]
    if arrangement == 0:
        return body + buttons
    if arrangement == 1:
        return buttons + body
    if arrangement == 2:
        return head + body + buttons
    return head + buttons + body


def _geometry(rng: random.Random, arrangement: int) -> Geometry:
    return Geometry(margin=rng.randint(3, 6), row=rng.choice([11, 12]), gap=rng.randint(1, 2),
                    label_width=rng.randint(40, 48) + 4 * (arrangement % 2))  # fmt: skip


def split_choices(split: str) -> tuple[tuple[str, ...], list[tuple[int, int]]]:
    """The templates and layouts a split draws from ("heldout": held-out templates on any
    layout, or train templates on held-out layouts)."""
    if split == "train":
        return TRAIN_TEMPLATES, TRAIN_LAYOUTS
    if split == "heldout_layout":
        return TRAIN_TEMPLATES, HELDOUT_LAYOUTS
    if split == "heldout_template":
        return HELDOUT_TEMPLATES, LAYOUTS
    if split == "heldout":
        return tuple(TEMPLATES), LAYOUTS
    raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")


def sample_task(
    seed: int,
    split: str = "train",
    template: str | None = None,
    width: int = 128,
    height: int = 128,
    composed: bool = False,
    clauses: float = 0.0,
    messages: float = 0.0,
) -> Task:
    """A task drawn from ``split`` (or of ``template``) with its layout, all from ``seed``.
    ``composed``: the training split draws the training-only `COMPOSED_TEMPLATES` too (one
    template in 12 each); ``clauses`` = p > 0: with probability p a clause task
    (`lmforge.agents.task_clauses`, uniform over its templates) instead. ``messages`` = q > 0:
    with probability q the task's message is switched (`build_task`'s ``switch``): a window
    that opens under one opens without it ("Close the message, …" then has nothing to close)
    and any other window opens under one its instruction does not mention — so whether a
    message is in the way is read from the screen, never from the instruction; the draw has
    its own stream, so everything else is the task ``messages=0`` draws. No other split has
    any of the three."""
    templates, layouts = split_choices(split)
    if (composed or clauses or messages) and split != "train":
        raise ValueError(f"the composed and clause templates and switched messages are "
                         f"training-only; split {split!r} has none")  # fmt: skip
    if not 0 <= messages <= 1:
        raise ValueError(f"messages={messages}: a probability in [0, 1]")
    if composed:
        templates = (*templates, *COMPOSED_TEMPLATES)
    rng = random.Random(f"gui-task/{split}/{template}/{seed}")
    if template is None and clauses and rng.random() < clauses:
        templates = tuple(CLAUSE_TEMPLATES)
    name = template or rng.choice(templates)
    if name not in BUILDERS:
        raise ValueError(f"unknown task template {name!r}; choose from {list(BUILDERS)}")
    if split == "heldout" and template is None:
        choices = [la for la in LAYOUTS if name in HELDOUT_TEMPLATES or la in HELDOUT_LAYOUTS]
        layout = rng.choice(choices)
    else:
        layout = rng.choice(layouts)
    switch = random.Random(f"gui-task-message/{seed}") if messages else None
    if switch is not None and switch.random() >= messages:
        switch = None
    return build_task(name, layout, rng, seed, width, height, switch)


def build_task(
    name: str,
    layout: tuple[int, int],
    rng: random.Random,
    seed: int,
    width: int,
    height: int,
    switch: random.Random | None = None,
) -> Task:
    """Build template ``name`` on ``layout`` = (theme index, arrangement) with ``rng``. A
    message covers the window iff the template opens under one (`UNDER_A_MESSAGE`) — unless
    ``switch`` is given: then the message is switched, whatever the instruction says (removed,
    or added with its title and text drawn from ``switch``, so ``rng``'s draws are the same;
    ``meta["message"]`` = "removed" / "added")."""
    instruction, body, goal, final, buttons = BUILDERS[name](rng)
    theme, arrangement = sorted(THEMES)[layout[0]], layout[1]
    widgets = _arrange(rng, arrangement, body, buttons)
    dialog, meta, under = None, {}, name in UNDER_A_MESSAGE
    if under or switch is not None:
        title, text = (rng if under else switch).choice(DIALOGS)
        dialog = Dialog("dialog", title, message=text, buttons=[Button("dlg_ok", "OK")])
    if switch is not None:
        meta["message"] = "removed" if under else "added"
        dialog = None if under else dialog
    win = Window(WINDOW_TITLES[name], width, height, widgets, dialog=dialog, theme=theme)
    layout_window(win, _geometry(rng, arrangement))
    bottom = max(w.box[3] for w in win.walk(shown_only=True))
    if bottom > height:
        raise ValueError(
            f"template {name} does not fit a {width}×{height} screen (bottom {bottom})"
        )
    return Task(name, instruction, win, goal, final, layout, seed, meta)


FREE_TEXT = ("free", "")  # the final event of a free-text task: none ever matches it


def instruction_words(text: str) -> set[str]:
    """The lower-case words of ``text`` (letters and digits)."""
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def window_words(task: Task) -> set[str]:
    """The words a task's window shows: title, labels, options, items."""
    words = instruction_words(task.window.title)
    for w in task.window.walk():
        for text in [w.label, *(getattr(w, a, None) or [] for a in ("options", "names", "items"))]:
            words |= instruction_words(" ".join(text) if isinstance(text, list) else str(text))
    return words


def task_for_instruction(
    text: str,
    seed: int = 0,
    split: str = "heldout",
    width: int = 128,
    height: int = 128,
    candidates: int = 32,
) -> Task:
    """A task for ``text``: a template name (a composed one too) draws that template's task
    (`sample_task`);
    otherwise ``text`` is an instruction, looked up among the tasks of every template with
    seeds ``seed`` … ``seed + candidates − 1``. One whose own instruction it is (ignoring
    case, spaces and a final full stop) is returned with its success check. Else the window
    is the one whose words (title, labels, options, items; then its instruction's words)
    overlap ``text`` most (ties: the first), and the task has the instruction ``text``, no
    goal and the final event
    `FREE_TEXT`, which nothing matches: episodes end on the window's terminal events
    (pressing a window button, opening an item, Enter, ``finished()``) or the step limit,
    and ``meta["free_text"]`` says no programmatic check applies."""
    if text in BUILDERS:
        return sample_task(seed, split, text, width, height)
    if not text.strip():
        raise ValueError("an empty instruction: give a task template name or an instruction")
    words = instruction_words(text)
    pool = [sample_task(seed + i, split, name, width, height)
            for i in range(candidates) for name in TEMPLATES]  # fmt: skip
    norm = lambda t: " ".join(t.lower().rstrip(". ").split())  # noqa: E731
    same = [task for task in pool if norm(task.instruction) == norm(text)]
    if same:
        return same[0]
    best = max(pool, key=lambda task: (len(words & window_words(task)),
                                       len(words & instruction_words(task.instruction))))  # fmt: skip
    meta = {**best.meta, "free_text": True}
    return replace(best, instruction=text.strip(), goal={}, final=FREE_TEXT, meta=meta)


__all__ = [
    "ARRANGEMENTS",
    "BUILDERS",
    "FREE_TEXT",
    "HELDOUT_LAYOUTS",
    "LAYOUTS",
    "SPLITS",
    "TRAIN_LAYOUTS",
    "Task",
    "WINDOW_TITLES",
    "build_task",
    "goal_progress",
    "instruction_words",
    "sample_task",
    "split_choices",
    "task_for_instruction",
    "task_success",
    "terminal",
    "window_words",
]
