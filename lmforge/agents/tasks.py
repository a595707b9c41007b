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
the geometry ranges; labels, values and sizes are drawn from the seed.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lmforge.agents.layout import layout_window
from lmforge.agents.render import THEMES
from lmforge.agents.widgets import (
    Button,
    Checkbox,
    Dialog,
    Dropdown,
    Geometry,
    Label,
    ListView,
    RadioGroup,
    ScrollPane,
    Tabs,
    TextField,
    Widget,
    Window,
)

ARRANGEMENTS = 4
LAYOUTS = [(t, a) for t in range(len(THEMES)) for a in range(ARRANGEMENTS)]
HELDOUT_LAYOUTS = [(t, a) for t, a in LAYOUTS if (t + a) % 4 == 3]
TRAIN_LAYOUTS = [la for la in LAYOUTS if la not in HELDOUT_LAYOUTS]
SPLITS = ("train", "heldout_layout", "heldout_template", "heldout")

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
WORDS = ["apple", "river", "stone", "cloud", "maple", "delta", "pixel", "orbit", "lemon", "cedar"]
DROPDOWNS = {
    "Size": ["Small", "Medium", "Large", "Huge"],
    "Colour": ["Red", "Green", "Blue", "Black"],
    "Font": ["Serif", "Sans", "Mono"],
    "Speed": ["Slow", "Normal", "Fast"],
    "Mode": ["Auto", "Manual", "Off"],
}
RADIOS = {
    "Shipping": ["Standard", "Express", "Pickup"],
    "Plan": ["Free", "Pro", "Team"],
    "Theme": ["Light", "Dark", "System"],
}
TOGGLES = ["Dark mode", "Autosave", "Sounds", "Sync", "Beta", "Tips", "Backups", "Alerts", "Wifi"]
ITEMS = ["invoice", "report", "order", "ticket", "memo"]
TABS = ["General", "Privacy", "Advanced"]


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


def _buttons(rng: random.Random, primary: str, secondary: str) -> list[Widget]:
    pair = [Button("primary", primary), Button("secondary", secondary)]
    return pair if rng.random() < 0.5 else pair[::-1]


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


def _other(rng: random.Random, options: list[str], not_this: str) -> str:
    return rng.choice([o for o in options if o != not_this])


def login_remember(rng: random.Random) -> tuple[str, list[Widget], dict, tuple, list[Widget]]:
    user = rng.choice(NAMES)
    tick = rng.choice(["Remember me", "Keep me signed in"])
    submit = rng.choice(["Sign in", "Log in"])
    body = [TextField("user", "Username"), TextField("pass", "Password"),
            Checkbox("remember", tick), Checkbox("show", rng.choice(["Show password", "Offline"]))]  # fmt: skip
    instruction = f"Sign in as {user} with '{tick}' ticked"
    return (
        instruction,
        body,
        {"user": user, "remember": True},
        ("press", "primary"),
        _buttons(rng, submit, "Cancel"),
    )


def dropdown_save(rng: random.Random):
    names = rng.sample(sorted(DROPDOWNS), 2)
    drops = [Dropdown(n.lower(), n, options=DROPDOWNS[n], selected=rng.randrange(len(DROPDOWNS[n])))
             for n in names]  # fmt: skip
    target = drops[rng.randrange(2)]
    value = _other(rng, target.options, target.value())
    save = rng.choice(["Save", "OK"])
    instruction = f"Set {target.label} to {value}, then press {save}"
    return (
        instruction,
        drops,
        {target.wid: value},
        ("press", "primary"),
        _buttons(rng, save, "Cancel"),
    )


def list_open(rng: random.Random):
    kind = rng.choice(ITEMS)
    numbers = rng.sample(range(1, 30), rng.randint(8, 12))
    items = [f"{kind} {n}" for n in numbers]
    target = rng.choice(items[3:])  # usually below the fold
    lv = ListView("list", "Items", items=items, visible=rng.randint(4, 5))
    instruction = f"Find '{target}' in the list and open it"
    return instruction, [lv], {}, ("open", target), []


def radio_apply(rng: random.Random):
    name = rng.choice(sorted(RADIOS))
    group = RadioGroup("radio", name, options=RADIOS[name], selected=rng.randrange(3))
    value = _other(rng, group.options, group.value())
    apply = rng.choice(["Apply", "Confirm"])
    body = [group, Checkbox("extra", rng.choice(TOGGLES), checked=rng.random() < 0.5)]
    instruction = f"Choose '{value}' for {name}, then press {apply}"
    return instruction, body, {"radio": value}, ("press", "primary"), _buttons(rng, apply, "Close")


def dialog_tick(rng: random.Random):
    labels = rng.sample(TOGGLES, 3)
    boxes = [Checkbox(f"opt{i}", lab, checked=rng.random() < 0.3) for i, lab in enumerate(labels)]
    target = rng.choice(boxes)
    done = rng.choice(["Done", "OK"])
    verb = "untick" if target.checked else "tick"
    instruction = f"Close the message, {verb} '{target.label}' and press {done}"
    return (
        instruction,
        boxes,
        {target.wid: not target.checked},
        ("press", "primary"),
        _buttons(rng, done, "Cancel"),
    )


def search_submit(rng: random.Random):
    query = rng.choice(WORDS)
    old = rng.choice(["", "", _other(rng, WORDS, query)])
    body = [TextField("search", "Search", text=old), Checkbox("case", "Match case")]
    instruction = f"Search for '{query}'"
    return instruction, body, {"search": query}, ("submit", "search"), []


def tab_checkbox(rng: random.Random):
    pages, toggles = [], rng.sample(TOGGLES, 6)
    for i in range(3):
        pages.append([Checkbox(f"t{i}c{j}", toggles[2 * i + j], checked=rng.random() < 0.4)
                      for j in range(2)])  # fmt: skip
    page = rng.randrange(1, 3)
    target = rng.choice(pages[page])
    verb = "untick" if target.checked else "tick"
    instruction = f"In the {TABS[page]} tab, {verb} '{target.label}', then press Save"
    body = [Tabs("tabs", "tabs", names=list(TABS), pages=pages)]
    return (
        instruction,
        body,
        {target.wid: not target.checked},
        ("press", "primary"),
        _buttons(rng, "Save", "Cancel"),
    )


def tab_dropdown(rng: random.Random):
    names = rng.sample(sorted(DROPDOWNS), 3)
    pages = [[Dropdown(n.lower(), n, options=DROPDOWNS[n], selected=rng.randrange(len(DROPDOWNS[n])))]
             for n in names]  # fmt: skip
    page = rng.randrange(1, 3)
    target = pages[page][0]
    value = _other(rng, target.options, target.value())
    instruction = f"In the {TABS[page]} tab, set {target.label} to {value}, then press Save"
    body = [Tabs("tabs", "tabs", names=list(TABS), pages=pages)]
    return (
        instruction,
        body,
        {target.wid: value},
        ("press", "primary"),
        _buttons(rng, "Save", "Cancel"),
    )


def pane_toggle(rng: random.Random):
    labels = rng.sample(TOGGLES, rng.randint(6, 8))
    boxes = [Checkbox(f"p{i}", lab, checked=rng.random() < 0.5) for i, lab in enumerate(labels)]
    target = rng.choice(boxes[3:])
    verb = "untick" if target.checked else "tick"
    pane = ScrollPane("pane", "Options", children=boxes, visible=3)
    instruction = f"In the options pane, {verb} '{target.label}' and press Done"
    return (
        instruction,
        [pane],
        {target.wid: not target.checked},
        ("press", "primary"),
        _buttons(rng, "Done", "Cancel"),
    )


def profile_edit(rng: random.Random):
    old, new = rng.sample(NAMES, 2)
    plan = RadioGroup("plan", "Plan", options=RADIOS["Plan"], selected=rng.randrange(3))
    value = _other(rng, plan.options, plan.value())
    body = [TextField("name", "Name", text=old), plan]
    instruction = f"Change Name to '{new}', choose '{value}' and Save"
    return (
        instruction,
        body,
        {"name": new, "plan": value},
        ("press", "primary"),
        _buttons(rng, "Save", "Cancel"),
    )


TemplateFn = Callable[[random.Random], tuple]
TEMPLATES: dict[str, TemplateFn] = {
    "login_remember": login_remember,
    "dropdown_save": dropdown_save,
    "list_open": list_open,
    "radio_apply": radio_apply,
    "dialog_tick": dialog_tick,
    "search_submit": search_submit,
    "tab_checkbox": tab_checkbox,
    "tab_dropdown": tab_dropdown,
    "pane_toggle": pane_toggle,
    "profile_edit": profile_edit,
}
HELDOUT_TEMPLATES = ("tab_dropdown", "pane_toggle", "profile_edit")
TRAIN_TEMPLATES = tuple(t for t in TEMPLATES if t not in HELDOUT_TEMPLATES)
TITLES = {"login_remember": "Sign in", "dropdown_save": "Preferences", "list_open": "Documents",
          "radio_apply": "Checkout", "dialog_tick": "Setup", "search_submit": "Search",
          "tab_checkbox": "Settings", "tab_dropdown": "Options", "pane_toggle": "Features",
          "profile_edit": "Profile"}  # fmt: skip
DIALOGS = [("Update", "A new version is out."), ("Notice", "Cookies are used."),
           ("Tip", "Press Tab to move.")]  # fmt: skip


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
) -> Task:
    """A task drawn from ``split`` (or of ``template``) with its layout, all from ``seed``."""
    templates, layouts = split_choices(split)
    rng = random.Random(f"gui-task/{split}/{template}/{seed}")
    name = template or rng.choice(templates)
    if name not in TEMPLATES:
        raise ValueError(f"unknown task template {name!r}; choose from {list(TEMPLATES)}")
    if split == "heldout" and template is None:
        choices = [la for la in LAYOUTS if name in HELDOUT_TEMPLATES or la in HELDOUT_LAYOUTS]
        layout = rng.choice(choices)
    else:
        layout = rng.choice(layouts)
    return build_task(name, layout, rng, seed, width, height)


def build_task(
    name: str, layout: tuple[int, int], rng: random.Random, seed: int, width: int, height: int
) -> Task:
    """Build template ``name`` on ``layout`` = (theme index, arrangement) with ``rng``."""
    instruction, body, goal, final, buttons = TEMPLATES[name](rng)
    theme, arrangement = sorted(THEMES)[layout[0]], layout[1]
    widgets = _arrange(rng, arrangement, body, buttons)
    dialog = None
    if name == "dialog_tick":
        title, message = rng.choice(DIALOGS)
        dialog = Dialog("dialog", title, message=message, buttons=[Button("dlg_ok", "OK")])
    win = Window(TITLES[name], width, height, widgets, dialog=dialog, theme=theme)
    layout_window(win, _geometry(rng, arrangement))
    bottom = max(w.box[3] for w in win.walk(shown_only=True))
    if bottom > height:
        raise ValueError(
            f"template {name} does not fit a {width}×{height} screen (bottom {bottom})"
        )
    return Task(name, instruction, win, goal, final, layout, seed)


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
    """A task for ``text``: a template name draws that template's task (`sample_task`);
    otherwise ``text`` is an instruction, looked up among the tasks of every template with
    seeds ``seed`` … ``seed + candidates − 1``. One whose own instruction it is (ignoring
    case, spaces and a final full stop) is returned with its success check. Else the window
    is the one whose words (title, labels, options, items; then its instruction's words)
    overlap ``text`` most (ties: the first), and the task has the instruction ``text``, no
    goal and the final event
    `FREE_TEXT`, which nothing matches: episodes end on the window's terminal events
    (pressing a window button, opening an item, Enter, ``finished()``) or the step limit,
    and ``meta["free_text"]`` says no programmatic check applies."""
    if text in TEMPLATES:
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
    "FREE_TEXT",
    "HELDOUT_LAYOUTS",
    "HELDOUT_TEMPLATES",
    "LAYOUTS",
    "SPLITS",
    "TEMPLATES",
    "TRAIN_LAYOUTS",
    "TRAIN_TEMPLATES",
    "Task",
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
