"""Clause tasks: training-only templates built from independent parts — a container (none,
a tab, a scroll pane, a message in the way) and one or two action clauses (tick a box, set a
dropdown, choose a radio option, type into a field (empty or holding a word), change a
filled one) — so that
every container occurs with most actions and every action in most containers.

    instruction, body, goal, final, buttons = CLAUSE_TEMPLATES["tab_choose_tick"](random.Random(0))
    # "In the Advanced tab, choose 'Standard' for Shipping, tick 'Beta', then press Done"

Why: the fixed templates tie each container to one action ("In the … tab" is always
followed by a tick), so a small agent learns the instruction's opening words → a memorised
sequence (BENCHMARKS.md, issue 18 sessions 23–24). Here the step after the container depends
only on the clause, as in the held-out templates, whose combinations stay excluded
(`HELD_OUT_KINDS`: a tab and a dropdown, a pane and a checkbox, a text field and a radio
group): no clause template's widget kinds contain one of them.
A clause reads as in the fixed templates ("set Size to Large", "choose 'Pro' for Plan",
"type 'river' into City", "change Name to 'bob'"); panes hold one-row widgets only (boxes,
fields, dropdowns).
"""

from __future__ import annotations

import random
from functools import partial
from itertools import permutations

from lmforge.agents.task_templates import (
    DROPDOWNS,
    FIELDS,
    NAMES,
    RADIOS,
    TABS,
    TOGGLES,
    WORDS,
    TemplateFn,
    dropdown,
    other_value,
    toggles,
    window_buttons,
)
from lmforge.agents.widgets import Checkbox, RadioGroup, ScrollPane, Tabs, TextField, Widget

CONTAINERS = ("none", "tab", "pane", "message")
ACTIONS = ("tick", "set", "choose", "type", "change")
KIND = {"tick": "checkbox", "set": "dropdown", "choose": "radio", "type": "textfield",
        "change": "textfield", "tab": "tabs", "pane": "pane", "message": "dialog"}  # fmt: skip
ONE_ROW = frozenset({"tick", "set", "type", "change"})  # what a pane row can hold
# the held-out templates' widget kinds: tab_dropdown, pane_toggle, profile_edit
HELD_OUT_KINDS = ({"tabs", "dropdown"}, {"pane", "checkbox"}, {"textfield", "radio"})
PANES = ["options", "contact", "details"]


def allowed(container: str, actions: tuple[str, ...]) -> bool:
    """Whether a clause task of these parts is allowed: its widget kinds (`KIND`: the
    container's and the actions') hold none of `HELD_OUT_KINDS`, a pane holds one-row widgets
    only, and two actions differ."""
    if len(set(actions)) != len(actions):
        return False
    if container == "pane" and not set(actions) <= ONE_ROW:
        return False
    kinds = {KIND[p] for p in (container, *actions) if p != "none"}
    return not any(held <= kinds for held in HELD_OUT_KINDS)


def clause(
    kind: str, rng: random.Random, tag: str, taken: set[str], boxes: int = 2
) -> tuple[str, list[Widget], dict]:
    """One action clause: its text, its widgets (the target and, for a tick, ``boxes`` − 1
    more boxes) with ids prefixed by ``tag``, and its goal; labels in ``taken`` are not
    reused."""
    if kind == "tick":
        row, target, verb = toggles(rng, boxes, tag, taken)
        return f"{verb} '{target.label}'", row, {target.wid: not target.checked}
    if kind == "set":
        drop = dropdown(rng, rng.choice(sorted(set(DROPDOWNS) - taken)))
        drop.wid = f"{tag}{drop.wid}"
        value = other_value(rng, drop.options, drop.value())
        return f"set {drop.label} to {value}", [drop], {drop.wid: value}
    if kind == "choose":
        name = rng.choice(sorted(set(RADIOS) - taken))
        group = RadioGroup(f"{tag}radio", name, options=RADIOS[name], selected=rng.randrange(3))
        value = other_value(rng, group.options, group.value())
        return f"choose '{value}' for {name}", [group], {group.wid: value}
    label = rng.choice([f for f in FIELDS + ["Name"] if f not in taken])
    if kind == "type":
        word = rng.choice(WORDS)
        old = rng.choice(["", other_value(rng, WORDS, word)])
        field = TextField(f"{tag}field", label, text=old)
        return f"type '{word}' into {label}", [field], {field.wid: word}
    old, new = rng.sample(NAMES, 2)
    field = TextField(f"{tag}field", label, text=old)
    return f"change {label} to '{new}'", [field], {field.wid: new}


def _labels(widgets: list[Widget]) -> set[str]:
    return {w.label for w in widgets}


def _clauses(rng: random.Random, actions: tuple[str, ...], tag: str, taken: set[str]):
    texts, widgets, goal = [], [], {}
    for i, kind in enumerate(actions):
        text, ws, g = clause(kind, rng, f"{tag}{i}", taken, boxes=3 - len(actions))
        taken |= _labels(ws)
        texts.append(text)
        widgets += ws
        goal.update(g)
    return texts, widgets, goal


def clause_task(container: str, actions: tuple[str, ...], rng: random.Random):
    """A task of ``container`` and ``actions`` (see the module docstring), in the templates'
    form: instruction, body widgets, goal, final event, buttons."""
    texts, widgets, goal = _clauses(rng, actions, "", set())
    press = rng.choice(["Save", "Apply", "OK", "Done"])
    body: list[Widget] = widgets
    prefix = ""
    if container == "tab":
        page, taken, pages = rng.randrange(1, 3), _labels(widgets), []
        for i in range(3):  # the other pages: the same kinds of widgets, other labels
            pages.append(widgets if i == page else _clauses(rng, actions, f"p{i}", taken)[1])
        body = [Tabs("tabs", "tabs", names=list(TABS), pages=pages)]
        prefix = f"In the {TABS[page]} tab, "
    elif container == "pane":
        fill = [Checkbox(f"f{i}", lab) for i, lab in enumerate(rng.sample(TOGGLES, 3))]
        rows = fill + widgets if rng.random() < 0.7 else widgets + fill  # usually out of view
        name = rng.choice(PANES)
        body = [ScrollPane("pane", name.title(), children=rows, visible=3)]
        prefix = f"In the {name} pane, "
    elif container == "message":
        prefix = "Close the message, "
    joined = texts[0] if len(texts) == 1 else f"{texts[0]}, {texts[1]}"
    instruction = prefix + (joined[0].upper() + joined[1:] if not prefix else joined)
    instruction += f", then press {press}"
    return instruction, body, goal, ("press", "primary"), window_buttons(rng, press, "Cancel")


def _name(container: str, actions: tuple[str, ...]) -> str:
    return "_".join(("plain" if container == "none" else container, *actions))


CLAUSE_TEMPLATES: dict[str, TemplateFn] = {
    _name(c, a): partial(clause_task, c, a)
    for c in CONTAINERS
    for n in (1, 2)
    for a in permutations(ACTIONS, n)
    if allowed(c, a)
}
CLAUSE_DIALOG_TEMPLATES = tuple(n for n in CLAUSE_TEMPLATES if n.startswith("message_"))
CLAUSE_TITLES = {n: {"plain": "Form", "tab": "Settings", "pane": "Panel", "message": "Setup"}[
    n.split("_")[0]] for n in CLAUSE_TEMPLATES}  # fmt: skip


__all__ = [
    "ACTIONS",
    "CLAUSE_DIALOG_TEMPLATES",
    "CLAUSE_TEMPLATES",
    "CLAUSE_TITLES",
    "CONTAINERS",
    "HELD_OUT_KINDS",
    "KIND",
    "ONE_ROW",
    "PANES",
    "allowed",
    "clause",
    "clause_task",
]
