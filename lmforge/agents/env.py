"""`GUIEnv`: a gymnasium environment of GUI tasks (`lmforge.agents.tasks`) acted on with the
unified action space (`lmforge.agents.actions`) — the executor of actions against a window.

    env = GUIEnv(split="train")
    obs, info = env.reset(seed=0)            # obs: screenshot [H, W, 3] uint8; info["instruction"]
    obs, reward, terminated, truncated, info = env.step("Thought: …\\nAction: click(40,52)")
    print(env.render_text())                 # the widget tree, for debugging

An action is an `Action`, an `AgentResponse`, or text (a full ``Thought: …\\nAction: …``
response or a bare action); text that does not parse, or a point off the screen, is an
*invalid action*: the step counts, nothing changes, ``info["invalid_action"]`` is True and
``info["error"]`` says why. The episode terminates on a terminal event (pressing a window
button, opening a list item, Enter in a text field, ``finished()``, ``call_user()``) with
reward 1 if the task's success check holds and 0 otherwise; it is truncated after
``max_steps``.

What each action does: ``click`` hits the topmost part (an open dialog is modal; a click
outside an open dropdown only closes it): focuses a text field, toggles a checkbox, selects
a radio option / dropdown option / list row / tab, opens or closes a dropdown, presses a
button, pages a scrollbar track. ``left_double`` is two clicks, except on a list row, which
it opens. ``right_single`` only closes an open dropdown (the GUI has no context menus).
``drag`` from a scrollbar thumb scrolls its list or pane in proportion. ``type`` appends to
the focused field (or replaces its text after ``ctrl a``). ``hotkey``: ``ctrl a`` selects the
field's text, ``backspace`` deletes (the selection or one character), ``enter`` submits the
focused field or opens the selected list row, ``esc`` closes a dropdown or the dialog,
``tab`` focuses the next text field. ``scroll`` moves the list or pane under the point by
`SCROLL_ROWS` rows. ``wait`` does nothing.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
import numpy as np

from lmforge.agents.actions import (
    Action,
    ActionParseError,
    AgentResponse,
    CallUser,
    Click,
    Drag,
    Finished,
    Hotkey,
    LeftDouble,
    RightSingle,
    Scroll,
    Type,
    action_point,
    parse_action,
    parse_response,
)
from lmforge.agents.layout import relayout_overlays, relayout_pane
from lmforge.agents.render import render_window
from lmforge.agents.tasks import Task, sample_task, task_success, terminal
from lmforge.agents.widgets import (
    Button,
    Checkbox,
    Dialog,
    Dropdown,
    ListView,
    RadioGroup,
    ScrollPane,
    Tabs,
    TextField,
    Window,
    box_contains,
)

SCROLL_ROWS = 2
MAX_FIELD_TEXT = 32
MAX_ACTION_TEXT = 256


def to_action(action: Action | AgentResponse | str, screen: tuple[int, int]) -> Action:
    """The action in ``action`` (text: a full response or a bare action); `ActionParseError`."""
    if isinstance(action, AgentResponse):
        action = action.action
    if isinstance(action, str):
        text = action.strip()
        if text.startswith("Thought:"):
            return parse_response(text, screen).action
        return parse_action(text, screen)
    point = action_point(action)
    ends = [(action.x2, action.y2)] if isinstance(action, Drag) else []
    for x, y in ([point] if point else []) + ends:
        if not (0 <= x < screen[0] and 0 <= y < screen[1]):
            raise ActionParseError(str(action), 0, f"a point on the {screen[0]}×{screen[1]} screen")
    return action


class WindowController:
    """Applies actions to a `Window`: the GUI's behaviour (see the module docstring)."""

    def __init__(self, window: Window) -> None:
        self.win = window

    def event(self, kind: str, target: str) -> None:
        self.win.events.append((kind, target))

    def apply(self, a: Action) -> None:
        if isinstance(a, Click):
            self.click(a.x, a.y)
        elif isinstance(a, LeftDouble):
            self.double(a.x, a.y)
        elif isinstance(a, RightSingle):
            self.close_dropdown()
        elif isinstance(a, Drag):
            self.drag(a.x1, a.y1, a.x2, a.y2)
        elif isinstance(a, Type):
            self.type(a.content)
        elif isinstance(a, Hotkey):
            self.hotkey(a.keys)
        elif isinstance(a, Scroll):
            self.scroll(a.x, a.y, a.direction)
        elif isinstance(a, Finished):
            self.event("finished", a.content)
        elif isinstance(a, CallUser):
            self.event("call_user", "")
        relayout_overlays(self.win)

    def close_dropdown(self) -> bool:
        drop = self.win.open_dropdown()
        if drop is not None:
            drop.open = False
        return drop is not None

    def click(self, x: int, y: int) -> None:
        win = self.win
        hit = win.hit(x, y)
        drop = win.open_dropdown()
        if drop is not None and (hit is None or hit.widget is not drop):
            drop.open = False  # a click outside an open dropdown only closes it
            return
        if hit is None:
            win.focus = None
            return
        w, part = hit.widget, hit.part
        win.focus = w.wid if isinstance(w, TextField) else None
        win.select_all = False
        if (isinstance(w, Dialog) and part == "close") or any(
            w is b for b in self.dialog_buttons()
        ):
            self.event("dialog", w.label)
            win.dialog = None
        elif isinstance(w, Button):
            self.event("press", w.wid)
        elif isinstance(w, Checkbox):
            w.checked = not w.checked
        elif isinstance(w, RadioGroup):
            w.selected = part
        elif isinstance(w, Dropdown):
            if isinstance(part, int):
                w.selected = part
            w.open = not w.open if part is None else False
        elif isinstance(w, Tabs):
            w.active = part
        elif isinstance(w, (ListView, ScrollPane)):
            if part == "scrollbar":
                thumb = w.thumb_box()
                step = -w.visible if y < thumb[1] else w.visible if y >= thumb[3] else 0
                self.move(w, step)
            elif isinstance(part, int):
                w.selected = part

    def dialog_buttons(self) -> list[Button]:
        return self.win.dialog.buttons if self.win.dialog is not None else []

    def double(self, x: int, y: int) -> None:
        hit = self.win.hit(x, y)
        on_row = hit is not None and isinstance(hit.widget, ListView) and isinstance(hit.part, int)
        if on_row and self.win.open_dropdown() is None:
            hit.widget.selected = hit.part
            self.open_item(hit.widget)
            return
        self.click(x, y)
        if not (self.win.events and terminal(self.win.events[-1])):
            self.click(x, y)

    def open_item(self, lv: ListView) -> None:
        lv.opened = lv.items[lv.selected]
        self.event("open", lv.opened)

    def move(self, w: ListView | ScrollPane, rows: int) -> None:
        w.offset = min(max(0, w.offset + rows), w.max_offset())
        if isinstance(w, ScrollPane):
            relayout_pane(w, self.win.geometry)

    def scrollable_at(self, x: int, y: int) -> ListView | ScrollPane | None:
        if self.win.dialog is not None or self.win.open_dropdown() is not None:
            return None
        for w in self.win.walk(shown_only=True):
            if isinstance(w, (ListView, ScrollPane)) and box_contains(w.box, x, y):
                return w
        return None

    def scroll(self, x: int, y: int, direction: str) -> None:
        w = self.scrollable_at(x, y)
        if w is not None and direction in ("up", "down"):
            self.move(w, SCROLL_ROWS if direction == "down" else -SCROLL_ROWS)

    def drag(self, x1: int, y1: int, x2: int, y2: int) -> None:
        w = self.scrollable_at(x1, y1)
        if w is None or not box_contains(w.thumb_box(), x1, y1):
            return
        thumb = w.thumb_box()
        track = w.scrollbar_box[3] - w.scrollbar_box[1] - (thumb[3] - thumb[1])
        rows = round((y2 - y1) * w.max_offset() / max(1, track))
        self.move(w, rows)

    def focused(self) -> TextField | None:
        return self.win.find(self.win.focus) if self.win.focus else None

    def type(self, content: str) -> None:
        f = self.focused()
        if f is not None and self.win.dialog is None:
            f.text = (content if self.win.select_all else f.text + content)[:MAX_FIELD_TEXT]
            self.win.select_all = False

    def hotkey(self, keys: tuple[str, ...]) -> None:
        win, f = self.win, self.focused()
        if keys == ("esc",):
            if not self.close_dropdown() and win.dialog is not None:
                self.event("dialog", "esc")
                win.dialog = None
        elif win.dialog is not None:
            return
        elif keys == ("ctrl", "a") and f is not None:
            win.select_all = True
        elif keys == ("backspace",) and f is not None:
            f.text = "" if win.select_all else f.text[:-1]
            win.select_all = False
        elif keys == ("enter",):
            lists = [
                w for w in win.walk(True) if isinstance(w, ListView) and w.selected is not None
            ]
            if f is not None:
                self.event("submit", f.wid)
            elif lists:
                self.open_item(lists[0])
        elif keys == ("tab",):
            fields = [w.wid for w in win.walk(True) if isinstance(w, TextField)]
            if fields:
                i = fields.index(win.focus) + 1 if win.focus in fields else 0
                win.focus, win.select_all = fields[i % len(fields)], False


def render_text(window: Window) -> str:
    """The window as an indented text tree: each shown widget's kind, label, state, box."""
    lines = [f"window {window.title!r} {window.width}x{window.height} theme={window.theme}"]
    for w in window.walk(shown_only=True):
        state = ""
        if isinstance(w, TextField):
            state = f"= {w.text!r}" + (" focused" if window.focus == w.wid else "")
        elif isinstance(w, Checkbox):
            state = "[x]" if w.checked else "[ ]"
        elif isinstance(w, (RadioGroup, Dropdown)):
            state = f"= {w.value()!r}" + (" open" if getattr(w, "open", False) else "")
        elif isinstance(w, ListView):
            shown = w.items[w.offset : w.offset + w.visible]
            state = f"rows {w.offset}..: {shown} selected={w.selected}"
        elif isinstance(w, Tabs):
            state = f"active={w.names[w.active]!r}"
        elif isinstance(w, ScrollPane):
            state = f"offset={w.offset}/{w.max_offset()}"
        elif isinstance(w, Dialog):
            state = f"{w.message!r} (modal)"
        lines.append(f"  {w.kind} {w.wid} {w.label!r} {state} {w.box}".rstrip())
    return "\n".join(lines)


class GUIEnv(gym.Env):
    """Gymnasium environment of GUI tasks. Observation: the screenshot (``Box`` uint8
    ``[H, W, 3]``); action: text (``Text``) or an `Action`. ``reset(seed, options)`` draws a
    task from ``split`` (``options``: ``{"task": Task}`` or ``{"template": name}``)."""

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 2}

    def __init__(
        self,
        split: str = "train",
        width: int = 128,
        height: int = 128,
        max_steps: int = 15,
        render_mode: str | None = None,
    ) -> None:
        self.split, self.width, self.height, self.max_steps = split, width, height, max_steps
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
        charset = string.ascii_letters + string.digits + string.punctuation + " \n"
        self.action_space = gym.spaces.Text(MAX_ACTION_TEXT, charset=charset)
        self.task: Task | None = None
        self.window: Window | None = None
        self.steps = 0

    @property
    def screen(self) -> tuple[int, int]:
        return self.width, self.height

    def observe(self) -> np.ndarray:
        return np.asarray(render_window(self.window), dtype=np.uint8)

    def info(self, **extra: Any) -> dict[str, Any]:
        return {"instruction": self.task.instruction, "template": self.task.template,
                "step": self.steps, **extra}  # fmt: skip

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        task = options.get("task")
        if task is None:
            task_seed = int(self.np_random.integers(2**31))
            task = sample_task(task_seed, self.split, options.get("template"), *self.screen)
        if (task.window.width, task.window.height) != self.screen:
            raise ValueError(
                f"task screen {task.window.width}×{task.window.height} ≠ env {self.screen}"
            )
        self.task, self.window, self.steps = task, task.fresh_window(), 0
        return self.observe(), self.info()

    def step(self, action: Action | AgentResponse | str):
        if self.window is None:
            raise RuntimeError("call reset() before step()")
        self.steps += 1
        try:
            parsed = to_action(action, self.screen)
        except ActionParseError as exc:
            truncated = self.steps >= self.max_steps
            return (
                self.observe(),
                0.0,
                False,
                truncated,
                self.info(invalid_action=True, error=str(exc)),
            )
        before = len(self.window.events)
        WindowController(self.window).apply(parsed)
        new = self.window.events[before:]
        terminated = any(terminal(e) for e in new)
        success = terminated and task_success(self.task, self.window)
        truncated = not terminated and self.steps >= self.max_steps
        info = self.info(invalid_action=False, action=parsed, events=new, success=success)
        return self.observe(), float(success), terminated, truncated, info

    def render(self):
        if self.render_mode == "ansi":
            return self.render_text()
        return self.observe()

    def render_text(self) -> str:
        """The current window as text (`render_text`)."""
        return render_text(self.window)


__all__ = [
    "MAX_ACTION_TEXT",
    "MAX_FIELD_TEXT",
    "SCROLL_ROWS",
    "GUIEnv",
    "WindowController",
    "render_text",
    "to_action",
]
