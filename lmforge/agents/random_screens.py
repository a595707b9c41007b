"""Random screens: windows whose widgets, order, labels, sizes, state and theme are all
drawn at random, so where an element lies can only be found by reading the screen (each
task template fixes its layout's rows). Labels come from the task templates' vocabulary; no
template, arrangement or (theme, arrangement) layout is used, so held-out layouts stay held
out. `lmforge.agents.agent_data` turns them into perception and grounding examples
(``agent.random_screens``).

    win = random_window(random.Random(0))   # a laid-out `Window`, ready to render
"""

from __future__ import annotations

import random

from lmforge.agents.layout import layout_window
from lmforge.agents.render import THEMES
from lmforge.agents.task_templates import (
    DIALOGS,
    DROPDOWNS,
    ITEMS,
    NAMES,
    RADIOS,
    TABS,
    TITLES,
    TOGGLES,
    WORDS,
)
from lmforge.agents.widgets import (
    Button,
    Checkbox,
    Dialog,
    Dropdown,
    Geometry,
    Label,
    ListView,
    RadioGroup,
    Tabs,
    TextField,
    Widget,
    Window,
)

__all__ = ["BUTTONS", "CHECKBOXES", "FIELDS", "HEADINGS", "KIND_WEIGHTS", "LabelPool", "fits",
           "random_geometry", "random_widget", "random_window"]  # fmt: skip

CHECKBOXES = [*TOGGLES, "Remember me", "Keep me signed in", "Show password", "Offline",
              "Match case"]  # fmt: skip
BUTTONS = ["Sign in", "Log in", "Cancel", "Save", "OK", "Apply", "Confirm", "Close", "Done"]
FIELDS = ["Username", "Password", "Search", "Name"]
HEADINGS = ["Please fill in:", "Settings", "Details"]
# kind → relative frequency of a new widget of that kind
KIND_WEIGHTS = {"checkbox": 4, "buttons": 2, "field": 2, "dropdown": 2, "radio": 1, "list": 1,
                "tabs": 1, "heading": 1}  # fmt: skip


class LabelPool:
    """Draws labels not yet used on this screen (so every element's name is unique)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def take(self, choices: list[str], k: int = 1) -> list[str] | None:
        free = [c for c in choices if c not in self.used]
        if len(free) < k:
            return None
        out = self.rng.sample(free, k)
        self.used.update(out)
        return out


def random_widget(kind: str, rng: random.Random, pool: LabelPool, n: int) -> list[Widget]:
    """Widgets of ``kind`` with labels from ``pool`` (ids made unique with ``n``); [] when
    the pool has no free label left."""
    if kind == "checkbox":
        lab = pool.take(CHECKBOXES)
        return [Checkbox(f"c{n}", lab[0], checked=rng.random() < 0.4)] if lab else []
    if kind == "buttons":
        labs = pool.take(BUTTONS, rng.choice([1, 2, 2, 3]))
        return [Button(f"b{n}_{i}", lab) for i, lab in enumerate(labs or [])]
    if kind == "field":
        lab = pool.take(FIELDS)
        text = rng.choice(["", "", rng.choice(NAMES + WORDS)])
        return [TextField(f"f{n}", lab[0], text=text)] if lab else []
    if kind == "dropdown":
        lab = pool.take(sorted(DROPDOWNS))
        if not lab:
            return []
        options = DROPDOWNS[lab[0]]
        if any(o in pool.used for o in options):
            return []
        pool.used.update(options)
        return [Dropdown(f"d{n}", lab[0], options=options, selected=rng.randrange(len(options)))]
    if kind == "radio":
        lab = pool.take(sorted(RADIOS))
        if not lab or any(o in pool.used for o in RADIOS[lab[0]]):
            return []
        pool.used.update(RADIOS[lab[0]])
        return [RadioGroup(f"r{n}", lab[0], options=RADIOS[lab[0]], selected=rng.randrange(3))]
    if kind == "list":
        name = rng.choice(ITEMS)
        items = [f"{name} {k}" for k in rng.sample(range(1, 30), rng.randint(5, 12))]
        if any(i in pool.used for i in items):
            return []
        pool.used.update(items)
        visible = rng.randint(3, 5)
        offset = rng.randint(0, max(0, len(items) - visible))
        return [ListView(f"l{n}", "Items", items=items, visible=visible, offset=offset)]
    if kind == "tabs":
        if any(t in pool.used for t in TABS):
            return []
        pool.used.update(TABS)
        pages = []
        for i in range(len(TABS)):
            labs = pool.take(CHECKBOXES, rng.randint(1, 2)) or []
            pages.append([Checkbox(f"t{n}_{i}_{j}", lab) for j, lab in enumerate(labs)])
        return [Tabs(f"t{n}", "tabs", names=list(TABS), pages=pages, active=rng.randrange(3))]
    if kind == "heading":
        return [Label(f"h{n}", rng.choice(HEADINGS))]
    raise ValueError(f"unknown widget kind {kind!r}; choose from {list(KIND_WEIGHTS)}")


def random_geometry(rng: random.Random) -> Geometry:
    """Margins, row height, gap and label column in the task templates' ranges."""
    return Geometry(margin=rng.randint(3, 6), row=rng.choice([11, 12]), gap=rng.randint(1, 2),
                    label_width=rng.randint(40, 52))  # fmt: skip


def fits(win: Window) -> bool:
    """Every shown widget lies on screen and every button is wide enough for its label."""
    for w in win.walk(shown_only=True):
        if w.box[2] > win.width or w.box[3] > win.height:
            return False
        if isinstance(w, Button) and w.box[2] - w.box[0] < 6 * len(w.label) + 8:
            return False
    return True


def random_window(
    rng: random.Random,
    width: int = 128,
    height: int = 128,
    dropdown_rate: float = 0.15,
    dialog_rate: float = 0.05,
    widgets: tuple[int, int] = (3, 10),
    weights: dict[str, int] | None = None,
) -> Window:
    """A window of ``widgets`` = 3–10 random widgets top to bottom (one that would leave the screen is
    dropped and another tried, 3 tries per widget), a random theme and title; then with
    probability ``dropdown_rate`` one dropdown is opened, with ``dialog_rate`` a message
    box is shown. ``weights``: each widget kind's relative frequency (`KIND_WEIGHTS` when None)."""
    pool = LabelPool(rng)
    theme, geometry = rng.choice(sorted(THEMES)), random_geometry(rng)
    win = Window(rng.choice(sorted(TITLES.values())), width, height, [], theme=theme)
    table = KIND_WEIGHTS if weights is None else weights
    kinds, freq = list(table), list(table.values())
    target, tries = rng.randint(*widgets), 0
    while len(win.widgets) < target and tries < 3 * target:
        tries += 1
        kind = rng.choices(kinds, freq)[0]
        if kind == "buttons" and win.widgets and isinstance(win.widgets[-1], Button):
            continue  # consecutive buttons would share (and overflow) one row
        new = random_widget(kind, rng, pool, tries)
        if not new:
            continue
        win.widgets += new
        layout_window(win, geometry)
        if not fits(win):
            del win.widgets[-len(new) :]
    if not win.widgets:
        win.widgets.append(Button("b", rng.choice(BUTTONS)))
    drops = [w for w in win.walk(shown_only=True) if isinstance(w, Dropdown)]
    if drops and rng.random() < dropdown_rate:
        rng.choice(drops).open = True
    elif rng.random() < dialog_rate:
        title, message = rng.choice(DIALOGS)
        win.dialog = Dialog("dialog", title, message=message, buttons=[Button("dlg_ok", "OK")])
    layout_window(win, geometry)
    return win
