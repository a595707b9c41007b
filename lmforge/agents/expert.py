"""A scripted expert: from the window's state (not its pixels) the next action that moves
toward the task's end state, with a short thought — the demonstrations of UI-TARS's
trajectory data, and the reference for grounding accuracy (its target box).

    step = expert_step(task, window)
    step.thought, step.action, step.target_box   # "The 'Size' list shows Small; I open it.", Click(…), box

The expert is closed-loop, so it recovers from any state a mistake leads to: it closes the
dialog, then brings every value widget whose value differs from the expected one (goal
values, others back to their initial value) to it — showing it first (switch tab, scroll the
pane), opening a dropdown, focusing and selecting text — and finally performs the final
event (press the button, scroll to and double-click the list item, Enter in the field).
``prefer`` names a widget to fix first (a reflection example corrects the mistake it just
made).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.agents.actions import (
    Action,
    Click,
    Finished,
    Hotkey,
    LeftDouble,
    Scroll,
    Type,
)
from lmforge.agents.tasks import Task
from lmforge.agents.widgets import (
    Box,
    Checkbox,
    Dropdown,
    ListView,
    RadioGroup,
    ScrollPane,
    Tabs,
    TextField,
    Widget,
    Window,
    box_center,
)


@dataclass(frozen=True)
class ExpertStep:
    """One expert decision: thought, action, and the box it acts on (None for keys/typing)."""

    thought: str
    action: Action
    target_box: Box | None = None
    target: str = ""


def click(box: Box, thought: str, target: str) -> ExpertStep:
    x, y = box_center(box)
    return ExpertStep(thought, Click(x, y), box, target)


def reveal(win: Window, w: Widget) -> ExpertStep | None:
    """A step that brings ``w`` on screen (switch tab / scroll its pane), or None if shown."""
    container, index = win.container_of(w.wid)
    if isinstance(container, Tabs) and container.active != index:
        name = container.names[index]
        return click(
            container.tab_boxes[index], f"'{w.label}' is on the {name} tab; I open it.", name
        )
    if isinstance(container, ScrollPane) and w not in container.shown():
        down = index >= container.offset + container.visible
        return scroll_step(container, down, f"'{w.label}' is out of view")
    return None


def scroll_step(w: ListView | ScrollPane, down: bool, why: str) -> ExpertStep:
    x, y = box_center(w.box)
    word = "down" if down else "up"
    return ExpertStep(f"{why}; I scroll {word}.", Scroll(x, y, word), w.box, w.label)


def set_value(win: Window, w: Widget, want: object) -> ExpertStep:
    """The next step that brings value widget ``w`` to ``want`` (it is shown)."""
    if isinstance(w, Checkbox):
        verb = "tick" if want else "untick"
        return click(w.mark_box, f"'{w.label}' must be {verb}ed; I {verb} it.", w.label)
    if isinstance(w, RadioGroup):
        i = w.options.index(want)
        return click(w.option_boxes[i], f"{w.label} must be '{want}'; I choose it.", str(want))
    if isinstance(w, Dropdown):
        if not w.open:
            return click(
                w.box, f"{w.label} shows {w.value()}, not {want}; I open the list.", w.label
            )
        i = w.options.index(want)
        return click(w.option_boxes[i], f"The {w.label} list is open; I pick {want}.", str(want))
    if isinstance(w, TextField):
        return edit_text(win, w, str(want))
    raise TypeError(f"the expert cannot set a {w.kind}")


def edit_text(win: Window, w: TextField, want: str) -> ExpertStep:
    if win.focus != w.wid:
        return click(w.box, f"I click the {w.label} field to type in it.", w.label)
    if win.select_all:
        if want:
            return ExpertStep(f"The text is selected; I type '{want}'.", Type(want))
        return ExpertStep("The text is selected; I delete it.", Hotkey(("backspace",)))
    if want.startswith(w.text):
        return ExpertStep(
            f"I type '{want[len(w.text) :]}' into {w.label}.", Type(want[len(w.text) :])
        )
    return ExpertStep(f"{w.label} holds '{w.text}'; I select all of it.", Hotkey(("ctrl", "a")))


def expert_step(task: Task, win: Window, prefer: str | None = None) -> ExpertStep:
    """The expert's next step on ``win`` for ``task``."""
    if win.dialog is not None:
        d = win.dialog
        return click(d.close_box, f"A '{d.label}' message covers the window; I close it.", "close")
    expected = task.expected_values()
    values = win.values()
    wrong = [w for w in win.walk() if w.wid in expected and values[w.wid] != expected[w.wid]]
    wrong.sort(key=lambda w: w.wid != prefer)
    drop = win.open_dropdown()
    if drop is not None and (not wrong or wrong[0] is not drop):
        return ExpertStep(
            f"The {drop.label} list is open by mistake; I close it.", Hotkey(("esc",))
        )
    if wrong:
        w = wrong[0]
        return reveal(win, w) or set_value(win, w, expected[w.wid])
    return final_step(task, win)


def final_step(task: Task, win: Window) -> ExpertStep:
    """The step toward the task's final event once every value is right."""
    kind, target = task.final
    if kind == "press":
        b = win.find(target)
        return reveal(win, b) or click(b.box, f"Everything is set; I press {b.label}.", b.label)
    if kind == "open":
        lv = next(w for w in win.walk() if isinstance(w, ListView) and target in w.items)
        i = lv.items.index(target)
        box = lv.row_box(i)
        if box is None:
            return scroll_step(lv, i >= lv.offset + lv.visible, f"'{target}' is not in view")
        x, y = box_center(box)
        return ExpertStep(
            f"'{target}' is in view; I double-click to open it.", LeftDouble(x, y), box, target
        )
    if kind == "submit":
        f = win.find(target)
        if win.focus != target:
            return click(f.box, f"I click the {f.label} field.", f.label)
        return ExpertStep(f"'{f.value()}' is typed; I press Enter.", Hotkey(("enter",)))
    return ExpertStep("The task is done.", Finished("done"))


__all__ = [
    "ExpertStep",
    "click",
    "edit_text",
    "expert_step",
    "final_step",
    "reveal",
    "scroll_step",
    "set_value",
]
