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
made). With ``drag``, a row far out of view (more than `DRAG_ABOVE_ROWS` rows to move: three
scrolls or more) is brought into view as a person would, by dragging the scrollbar's thumb
(`drag_step`; off by default, so the data and the held-out questions of earlier runs stay
the same): its ``target_box`` is the thumb, its ``drop_box`` the points where releasing it
shows the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmforge.agents.actions import (
    Action,
    Click,
    Drag,
    Finished,
    Hotkey,
    LeftDouble,
    Scroll,
    Type,
)
from lmforge.agents.env import SCROLL_ROWS
from lmforge.agents.tasks import Task
from lmforge.agents.thoughts import say
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
    """One expert decision: thought, action, and the box it acts on (None for keys/typing);
    a drag's ``drop_box``: where its second point may lie, given the first at the action's
    own ``(x1, y1)`` (`drag_step`)."""

    thought: str
    action: Action
    target_box: Box | None = None
    target: str = ""
    drop_box: Box | None = None


DRAG_ABOVE_ROWS = 2 * SCROLL_ROWS  # a row further than two scrolls is dragged into view


def click(box: Box, thought: str, target: str) -> ExpertStep:
    x, y = box_center(box)
    return ExpertStep(thought, Click(x, y), box, target)


def reveal(win: Window, w: Widget, drag: bool = False) -> ExpertStep | None:
    """A step that brings ``w`` on screen (switch tab / scroll its pane, or with ``drag``
    drag its scrollbar when it is far: `drag_step`), or None if shown."""
    container, index = win.container_of(w.wid)
    if isinstance(container, Tabs) and container.active != index:
        name = container.names[index]
        return click(container.tab_boxes[index], say("tab", label=w.label, tab=name), name)
    if isinstance(container, ScrollPane) and w not in container.shown():
        down = index >= container.offset + container.visible
        why = ("pane", w.label)
        far = drag_step(container, index, why) if drag else None
        return far or scroll_step(container, down, why)
    return None


def drag_step(w: ListView | ScrollPane, index: int, why: tuple[str, str]) -> ExpertStep | None:
    """Drag ``w``'s scrollbar thumb so that row ``index`` comes into view (near the middle),
    when that moves more than `DRAG_ABOVE_ROWS` rows; else None (scrolling is as quick).
    The environment moves a drag by round(Δy · max_offset / track) rows (track: the
    scrollbar's height less the thumb's), so the row shows for Δy in
    ((r_lo − ½) · p, (r_hi + ½) · p), p = track / max_offset pixels per row, r_lo..r_hi the
    moves that put the row in view (unbounded at the list's ends, where the offset clamps):
    ``drop_box`` is that range below or above the thumb's centre, one pixel inside each end,
    within the scrollbar."""
    top = w.max_offset()
    lo, hi = max(0, index - w.visible + 1), min(index, top)
    want = min(max(index - w.visible // 2, lo), hi)
    rows = want - w.offset
    thumb = w.thumb_box()
    track = (w.scrollbar_box[3] - w.scrollbar_box[1]) - (thumb[3] - thumb[1])
    if lo > hi or abs(rows) <= DRAG_ABOVE_ROWS or top == 0 or track < top:
        return None  # (fewer than 1 px per row: a drag could not aim)
    per = track / top
    x, y1 = box_center(thumb)
    y2 = round(y1 + rows * per)
    d_lo = -1e9 if lo == 0 else (lo - w.offset - 0.5) * per
    d_hi = 1e9 if hi == top else (hi - w.offset + 0.5) * per
    sx0, sy0, sx1, sy1 = w.scrollbar_box
    y_lo = max(sy0, math.floor(y1 + d_lo) + 1)
    y_hi = min(sy1, math.ceil(y1 + d_hi) - 1)
    drop = (sx0, y_lo, sx1, y_hi)
    word = "down" if rows > 0 else "up"
    thought = say(f"{why[0]}_drag", label=why[1], dir=word)
    return ExpertStep(thought, Drag(x, y1, x, y2), thumb, w.label, drop)


def scroll_step(w: ListView | ScrollPane, down: bool, why: tuple[str, str]) -> ExpertStep:
    x, y = box_center(w.box)
    word = "down" if down else "up"
    thought = say(f"{why[0]}_scroll", label=why[1], dir=word)
    return ExpertStep(thought, Scroll(x, y, word), w.box, w.label)


def set_value(win: Window, w: Widget, want: object) -> ExpertStep:
    """The next step that brings value widget ``w`` to ``want`` (it is shown)."""
    if isinstance(w, Checkbox):
        verb = "tick" if want else "untick"
        return click(w.mark_box, say(verb, label=w.label), w.label)
    if isinstance(w, RadioGroup):
        i = w.options.index(want)
        return click(w.option_boxes[i], say("radio", label=w.label, want=want), str(want))
    if isinstance(w, Dropdown):
        if not w.open:
            return click(w.box, say("dd_open", label=w.label, value=w.value(), want=want), w.label)
        i = w.options.index(want)
        return click(w.option_boxes[i], say("dd_pick", label=w.label, want=want), str(want))
    if isinstance(w, TextField):
        return edit_text(win, w, str(want))
    raise TypeError(f"the expert cannot set a {w.kind}")


def edit_text(win: Window, w: TextField, want: str) -> ExpertStep:
    if win.focus != w.wid:
        return click(w.box, say("field", field=w.label), w.label)
    if win.select_all:
        if want:
            return ExpertStep(say("selected_type", want=want), Type(want))
        return ExpertStep(say("selected_delete"), Hotkey(("backspace",)))
    if want.startswith(w.text):
        return ExpertStep(
            say("type_into", want=want[len(w.text) :], field=w.label), Type(want[len(w.text) :])
        )
    return ExpertStep(say("select_all", label=w.label, text=w.text), Hotkey(("ctrl", "a")))


def expert_step(
    task: Task, win: Window, prefer: str | None = None, drag: bool = False
) -> ExpertStep:
    """The expert's next step on ``win`` for ``task`` (``drag``: rows far out of view are
    dragged into it, `drag_step`; else scrolled)."""
    if win.dialog is not None:
        d = win.dialog
        return click(d.close_box, say("dialog", title=d.label), "close")
    expected = task.expected_values()
    values = win.values()
    wrong = [w for w in win.walk() if w.wid in expected and values[w.wid] != expected[w.wid]]
    wrong.sort(key=lambda w: w.wid != prefer)
    drop = win.open_dropdown()
    if drop is not None and (not wrong or wrong[0] is not drop):
        return ExpertStep(say("dd_close", other=drop.label), Hotkey(("esc",)))
    if wrong:
        w = wrong[0]
        return reveal(win, w, drag) or set_value(win, w, expected[w.wid])
    return final_step(task, win, drag)


def final_step(task: Task, win: Window, drag: bool = False) -> ExpertStep:
    """The step toward the task's final event once every value is right."""
    kind, target = task.final
    if kind == "press":
        b = win.find(target)
        return reveal(win, b, drag) or click(b.box, say("press", button=b.label), b.label)
    if kind == "open":
        lv = next(w for w in win.walk() if isinstance(w, ListView) and target in w.items)
        i = lv.items.index(target)
        box = lv.row_box(i)
        if box is None:
            why = ("list", target)
            far = drag_step(lv, i, why) if drag else None
            return far or scroll_step(lv, i >= lv.offset + lv.visible, why)
        x, y = box_center(box)
        return ExpertStep(say("open_row", label=target), LeftDouble(x, y), box, target)
    if kind == "submit":
        f = win.find(target)
        if win.focus != target:
            return click(f.box, say("submit_field", label=f.label), f.label)
        return ExpertStep(say("submit", want=f.value()), Hotkey(("enter",)))
    return ExpertStep(say("done"), Finished("done"))


__all__ = [
    "DRAG_ABOVE_ROWS",
    "ExpertStep",
    "click",
    "drag_step",
    "edit_text",
    "expert_step",
    "final_step",
    "reveal",
    "scroll_step",
    "set_value",
]
