"""The task templates: each draws, from a random stream, an instruction, the widgets of its
window's body, the goal values, the final event and the window's buttons.

    instruction, body, goal, final, buttons = TEMPLATES["dropdown_save"](random.Random(3))

Ten templates define the splits (`lmforge.agents.tasks`): seven for training
(`TRAIN_TEMPLATES`) and three held out (`HELDOUT_TEMPLATES`: a tab then a dropdown, a scroll
pane then a checkbox, a filled-in field then a radio group — new combinations of steps the
training templates teach one by one). `COMPOSED_TEMPLATES` are five more, training-only
templates that join the training templates' steps in other orders — a tab then a radio
group, a message then a dropdown, a dropdown then a checkbox, a text field then a checkbox,
a scroll pane of text fields — so that an agent learns to follow what the screen shows rather
than one template's sequence. None of them is a held-out template's combination, and no
held-out split draws them (`tasks.sample_task(…, composed=True)` adds them to the training
split only), so the held-out splits are the same with or without them.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from lmforge.agents.widgets import (
    Button,
    Checkbox,
    Dropdown,
    ListView,
    RadioGroup,
    ScrollPane,
    Tabs,
    TextField,
    Widget,
)

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
FIELDS = ["City", "Street", "Phone", "Email", "Country", "Company", "Website"]


def window_buttons(rng: random.Random, primary: str, secondary: str) -> list[Widget]:
    """The window's primary and secondary buttons, in a random order."""
    pair = [Button("primary", primary), Button("secondary", secondary)]
    return pair if rng.random() < 0.5 else pair[::-1]


def other_value(rng: random.Random, options: list[str], not_this: str) -> str:
    """One of ``options`` other than ``not_this``."""
    return rng.choice([o for o in options if o != not_this])


def dropdown(rng: random.Random, name: str) -> Dropdown:
    """The `DROPDOWNS` list ``name`` (id: its lower-case name) with a random value selected."""
    options = DROPDOWNS[name]
    return Dropdown(name.lower(), name, options=options, selected=rng.randrange(len(options)))


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
        window_buttons(rng, submit, "Cancel"),
    )


def dropdown_save(rng: random.Random):
    names = rng.sample(sorted(DROPDOWNS), 2)
    drops = [dropdown(rng, n) for n in names]
    target = drops[rng.randrange(2)]
    value = other_value(rng, target.options, target.value())
    save = rng.choice(["Save", "OK"])
    instruction = f"Set {target.label} to {value}, then press {save}"
    return (
        instruction,
        drops,
        {target.wid: value},
        ("press", "primary"),
        window_buttons(rng, save, "Cancel"),
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
    value = other_value(rng, group.options, group.value())
    apply = rng.choice(["Apply", "Confirm"])
    body = [group, Checkbox("extra", rng.choice(TOGGLES), checked=rng.random() < 0.5)]
    instruction = f"Choose '{value}' for {name}, then press {apply}"
    return (
        instruction,
        body,
        {"radio": value},
        ("press", "primary"),
        window_buttons(rng, apply, "Close"),
    )


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
        window_buttons(rng, done, "Cancel"),
    )


def search_submit(rng: random.Random):
    query = rng.choice(WORDS)
    old = rng.choice(["", "", other_value(rng, WORDS, query)])
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
        window_buttons(rng, "Save", "Cancel"),
    )


def tab_dropdown(rng: random.Random):
    names = rng.sample(sorted(DROPDOWNS), 3)
    pages = [[dropdown(rng, n)] for n in names]
    page = rng.randrange(1, 3)
    target = pages[page][0]
    value = other_value(rng, target.options, target.value())
    instruction = f"In the {TABS[page]} tab, set {target.label} to {value}, then press Save"
    body = [Tabs("tabs", "tabs", names=list(TABS), pages=pages)]
    return (
        instruction,
        body,
        {target.wid: value},
        ("press", "primary"),
        window_buttons(rng, "Save", "Cancel"),
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
        window_buttons(rng, "Done", "Cancel"),
    )


def profile_edit(rng: random.Random):
    old, new = rng.sample(NAMES, 2)
    plan = RadioGroup("plan", "Plan", options=RADIOS["Plan"], selected=rng.randrange(3))
    value = other_value(rng, plan.options, plan.value())
    body = [TextField("name", "Name", text=old), plan]
    instruction = f"Change Name to '{new}', choose '{value}' and Save"
    return (
        instruction,
        body,
        {"name": new, "plan": value},
        ("press", "primary"),
        window_buttons(rng, "Save", "Cancel"),
    )


def toggles(
    rng: random.Random,
    boxes: int = 2,
    tag: str = "",
    taken: frozenset[str] | set[str] = frozenset(),
) -> tuple[list[Checkbox], Checkbox, str]:
    """``boxes`` checkboxes (ids ``{tag}c0``, ``{tag}c1``, …; labels from `TOGGLES` not in
    ``taken``; each ticked with probability 0.4), the one to flip, and its verb ("tick" or
    "untick")."""
    labels = rng.sample([t for t in TOGGLES if t not in taken], boxes)
    row = [Checkbox(f"{tag}c{i}", lab, checked=rng.random() < 0.4) for i, lab in enumerate(labels)]
    target = rng.choice(row)
    return row, target, "untick" if target.checked else "tick"


def tab_radio(rng: random.Random):
    """Composed: a tab, then a radio group on its page."""
    names = rng.sample(sorted(RADIOS), 3)
    pages = [[RadioGroup(n.lower(), n, options=RADIOS[n], selected=rng.randrange(3))]
             for n in names]  # fmt: skip
    page = rng.randrange(1, 3)
    target = pages[page][0]
    value = other_value(rng, target.options, target.value())
    instruction = f"In the {TABS[page]} tab, choose '{value}' for {target.label}, then press Save"
    body = [Tabs("tabs", "tabs", names=list(TABS), pages=pages)]
    buttons = window_buttons(rng, "Save", "Cancel")
    return instruction, body, {target.wid: value}, ("press", "primary"), buttons


def dialog_dropdown(rng: random.Random):
    """Composed: a message to close (`DIALOG_TEMPLATES`), then a dropdown."""
    drops = [dropdown(rng, n) for n in rng.sample(sorted(DROPDOWNS), 2)]
    target = drops[rng.randrange(2)]
    value = other_value(rng, target.options, target.value())
    done = rng.choice(["OK", "Done"])
    instruction = f"Close the message, set {target.label} to {value} and press {done}"
    buttons = window_buttons(rng, done, "Cancel")
    return instruction, drops, {target.wid: value}, ("press", "primary"), buttons


def dropdown_tick(rng: random.Random):
    """Composed: a dropdown, then a checkbox."""
    drop = dropdown(rng, rng.choice(sorted(DROPDOWNS)))
    value = other_value(rng, drop.options, drop.value())
    boxes, target, verb = toggles(rng)
    apply = rng.choice(["Apply", "Save"])
    instruction = f"Set {drop.label} to {value}, {verb} '{target.label}' and press {apply}"
    goal = {drop.wid: value, target.wid: not target.checked}
    return (
        instruction,
        [drop, *boxes],
        goal,
        ("press", "primary"),
        window_buttons(rng, apply, "Close"),
    )


def form_tick(rng: random.Random):
    """Composed: a text field (empty or holding a word to replace), then a checkbox."""
    label, word = rng.choice(FIELDS), rng.choice(WORDS)
    old = rng.choice(["", other_value(rng, WORDS, word)])
    boxes, target, verb = toggles(rng)
    instruction = f"Type '{word}' into {label}, {verb} '{target.label}', then press Confirm"
    body = [TextField("field", label, text=old), *boxes]
    goal = {"field": word, target.wid: not target.checked}
    return instruction, body, goal, ("press", "primary"), window_buttons(rng, "Confirm", "Cancel")


def pane_field(rng: random.Random):
    """Composed: a scroll pane of text fields, the one to fill usually out of view."""
    labels = rng.sample(FIELDS, rng.randint(5, 7))
    fields = [TextField(f"f{i}", lab) for i, lab in enumerate(labels)]
    target, word = rng.choice(fields[2:]), rng.choice(WORDS)
    pane = ScrollPane("pane", "Contact", children=fields, visible=3)
    instruction = f"In the contact pane, type '{word}' into {target.label}, then press Save"
    buttons = window_buttons(rng, "Save", "Cancel")
    return instruction, [pane], {target.wid: word}, ("press", "primary"), buttons


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
COMPOSED_TEMPLATES: dict[str, TemplateFn] = {
    "tab_radio": tab_radio,
    "dialog_dropdown": dialog_dropdown,
    "dropdown_tick": dropdown_tick,
    "form_tick": form_tick,
    "pane_field": pane_field,
}
HELDOUT_TEMPLATES = ("tab_dropdown", "pane_toggle", "profile_edit")
TRAIN_TEMPLATES = tuple(t for t in TEMPLATES if t not in HELDOUT_TEMPLATES)
DIALOG_TEMPLATES = ("dialog_tick", "dialog_dropdown")  # their windows open under a message
TITLES = {"login_remember": "Sign in", "dropdown_save": "Preferences", "list_open": "Documents",
          "radio_apply": "Checkout", "dialog_tick": "Setup", "search_submit": "Search",
          "tab_checkbox": "Settings", "tab_dropdown": "Options", "pane_toggle": "Features",
          "profile_edit": "Profile"}  # fmt: skip
COMPOSED_TITLES = {"tab_radio": "Account", "dialog_dropdown": "Display", "dropdown_tick": "Editor",
                   "form_tick": "Contact", "pane_field": "Address"}  # fmt: skip
DIALOGS = [("Update", "A new version is out."), ("Notice", "Cookies are used."),
           ("Tip", "Press Tab to move.")]  # fmt: skip


__all__ = [
    "COMPOSED_TEMPLATES",
    "COMPOSED_TITLES",
    "DIALOGS",
    "DIALOG_TEMPLATES",
    "DROPDOWNS",
    "FIELDS",
    "HELDOUT_TEMPLATES",
    "ITEMS",
    "NAMES",
    "RADIOS",
    "TABS",
    "TEMPLATES",
    "TITLES",
    "TOGGLES",
    "TRAIN_TEMPLATES",
    "WORDS",
    "TemplateFn",
    "dialog_dropdown",
    "dialog_tick",
    "dropdown",
    "dropdown_save",
    "dropdown_tick",
    "form_tick",
    "list_open",
    "login_remember",
    "other_value",
    "pane_field",
    "pane_toggle",
    "profile_edit",
    "radio_apply",
    "search_submit",
    "tab_checkbox",
    "tab_dropdown",
    "tab_radio",
    "toggles",
    "window_buttons",
]
