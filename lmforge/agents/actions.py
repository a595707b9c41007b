"""The agent's action language: UI-TARS's unified action space (Qin et al. 2025, "UI-TARS:
Pioneering Automated GUI Interaction with Native Agents", Table 1) as dataclasses, with an
exact text form, a formatter and a parser (``parse_action(format_action(a)) == a``).

    >>> r = parse_response("Thought: The box is unticked; I tick it.\\nAction: click(12,40)")
    >>> r.action, r.thought
    (Click(x=12, y=40), 'The box is unticked; I tick it.')

The text form (one canonical spelling, no optional spaces — a grammar can then describe it
exactly, `lmforge.agents.action_grammar`):

    click(x,y)  left_double(x,y)  right_single(x,y)  drag(x1,y1,x2,y2)
    type('content')  hotkey('ctrl a')  scroll(x,y,down)  wait()  finished('content')  call_user()

Coordinates are integers in the **screenshot's pixel space** (0 ≤ x < width, 0 ≤ y <
height; UI-TARS normalises to 0–1000, but lmforge's screens are ~128 px, so pixels are both
exact and shorter), written without leading zeros. Strings are single-quoted printable ASCII
of at most `MAX_CONTENT` characters, ``\\'`` and ``\\\\`` escaping a quote and a backslash.
``hotkey`` holds one to three key names from `KEYS` separated by single spaces; ``scroll``'s
direction is one of `SCROLL_DIRECTIONS`. A full model response is ``Thought: <one line of at
most MAX_THOUGHT printable characters>\\nAction: <action>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

MAX_CONTENT = 32
MAX_THOUGHT = 96
MAX_HOTKEY_KEYS = 3
SCROLL_DIRECTIONS = ("up", "down", "left", "right")
KEYS = (
    ("ctrl", "shift", "alt", "enter", "tab", "esc", "backspace", "delete", "space")
    + ("up", "down", "left", "right", "home", "end", "pageup", "pagedown")
    + tuple("abcdefghijklmnopqrstuvwxyz0123456789")
)


class ActionParseError(ValueError):
    """Text that is not an action: the message names the column and what was expected."""

    def __init__(self, text: str, column: int, expected: str) -> None:
        self.text, self.column, self.expected = text, column, expected
        super().__init__(f"column {column + 1} of {text!r}: expected {expected}")


@dataclass(frozen=True)
class Click:
    x: int
    y: int


@dataclass(frozen=True)
class LeftDouble:
    x: int
    y: int


@dataclass(frozen=True)
class RightSingle:
    x: int
    y: int


@dataclass(frozen=True)
class Drag:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True)
class Type:
    content: str


@dataclass(frozen=True)
class Hotkey:
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Scroll:
    x: int
    y: int
    direction: str


@dataclass(frozen=True)
class Wait:
    pass


@dataclass(frozen=True)
class Finished:
    content: str = ""


@dataclass(frozen=True)
class CallUser:
    pass


Action = (
    Click | LeftDouble | RightSingle | Drag | Type | Hotkey | Scroll | Wait | Finished | CallUser
)

# name in the text form → class, and the kinds of its arguments ("int", "str", "keys", "dir")
ACTION_SIGNATURES: dict[str, tuple[type, tuple[str, ...]]] = {
    "click": (Click, ("int", "int")),
    "left_double": (LeftDouble, ("int", "int")),
    "right_single": (RightSingle, ("int", "int")),
    "drag": (Drag, ("int", "int", "int", "int")),
    "type": (Type, ("str",)),
    "hotkey": (Hotkey, ("keys",)),
    "scroll": (Scroll, ("int", "int", "dir")),
    "wait": (Wait, ()),
    "finished": (Finished, ("str",)),
    "call_user": (CallUser, ()),
}
ACTION_NAMES = {cls: name for name, (cls, _) in ACTION_SIGNATURES.items()}


@dataclass(frozen=True)
class AgentResponse:
    """One model turn: the thought (System-2 reasoning, one line) and the action."""

    thought: str
    action: Action


def quote(content: str) -> str:
    """``content`` as a single-quoted string of the action language."""
    return "'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'"


def format_action(action: Action) -> str:
    """The canonical text of ``action`` (checked: a value the parser would refuse raises)."""
    name = ACTION_NAMES.get(type(action))
    if name is None:
        raise TypeError(f"not an action: {action!r}")
    parts = []
    for f in fields(action):
        value = getattr(action, f.name)
        if isinstance(value, tuple):
            parts.append(quote(" ".join(value)))
        elif isinstance(value, str) and f.name == "content":
            parts.append(quote(value))
        else:
            parts.append(str(value))
    text = f"{name}({','.join(parts)})"
    parse_action(text)  # a formatter must never emit what the parser refuses
    return text


def format_response(thought: str, action: Action) -> str:
    """``Thought: …\\nAction: …``."""
    text = f"Thought: {thought}\nAction: {format_action(action)}"
    parse_response(text)
    return text


class _Reader:
    """A cursor over one action's text; every failure is an `ActionParseError` naming the
    column and what was expected there."""

    def __init__(self, text: str, screen: tuple[int, int] | None) -> None:
        self.text, self.pos, self.screen = text, 0, screen

    def fail(self, expected: str) -> ActionParseError:
        return ActionParseError(self.text, self.pos, expected)

    def literal(self, s: str) -> None:
        if not self.text.startswith(s, self.pos):
            raise self.fail(repr(s))
        self.pos += len(s)

    def integer(self, limit: int | None, axis: str) -> int:
        m = re.compile(r"0|[1-9][0-9]*").match(self.text, self.pos)
        if m is None:
            raise self.fail(f"an integer {axis} coordinate (no sign, no leading zeros)")
        value = int(m.group())
        if limit is not None and value >= limit:
            raise self.fail(f"{axis} < {limit} (the screenshot is that many pixels)")
        self.pos = m.end()
        return value

    def string(self) -> str:
        self.literal("'")
        out = []
        while True:
            if self.pos >= len(self.text):
                raise self.fail("a closing quote")
            c = self.text[self.pos]
            if c == "'":
                self.pos += 1
                return "".join(out)
            if c == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if nxt not in ("\\", "'"):
                    raise self.fail("\\\\ or \\' after a backslash")
                c, self.pos = nxt, self.pos + 1
            elif not " " <= c <= "~":
                raise self.fail("a printable ASCII character")
            if len(out) == MAX_CONTENT:
                raise self.fail(f"at most {MAX_CONTENT} characters in a string")
            out.append(c)
            self.pos += 1

    def keys(self) -> tuple[str, ...]:
        start = self.pos
        names = tuple(self.string().split(" "))
        if not 1 <= len(names) <= MAX_HOTKEY_KEYS or any(k not in KEYS for k in names):
            self.pos = start
            raise self.fail(
                f"1-{MAX_HOTKEY_KEYS} key names separated by single spaces, from {KEYS}"
            )
        return names

    def direction(self) -> str:
        for d in SCROLL_DIRECTIONS:
            if self.text.startswith(d, self.pos):
                self.pos += len(d)
                return d
        raise self.fail(f"a scroll direction ({', '.join(SCROLL_DIRECTIONS)})")

    def argument(self, kind: str, index: int):
        if kind == "int":
            axis = "x" if index % 2 == 0 else "y"
            limit = None if self.screen is None else self.screen[index % 2]
            return self.integer(limit, axis)
        return {"str": self.string, "keys": self.keys, "dir": self.direction}[kind]()


def parse_action(text: str, screen: tuple[int, int] | None = None) -> Action:
    """The action written in ``text`` (the whole text, canonical form). ``screen`` = (width,
    height) also checks that coordinates lie on the screenshot. `ActionParseError` otherwise."""
    r = _Reader(text, screen)
    m = re.compile(r"[a-z_]+").match(text)
    name = m.group() if m else ""
    if name not in ACTION_SIGNATURES:
        raise r.fail(f"an action name ({', '.join(ACTION_SIGNATURES)})")
    cls, kinds = ACTION_SIGNATURES[name]
    r.pos = len(name)
    r.literal("(")
    values = []
    for i, kind in enumerate(kinds):
        if i:
            r.literal(",")
        values.append(r.argument(kind, i))
    r.literal(")")
    if r.pos != len(text):
        raise r.fail("the end of the action")
    return cls(*values)


THOUGHT_PREFIX = "Thought: "
ACTION_PREFIX = "\nAction: "


def parse_response(text: str, screen: tuple[int, int] | None = None) -> AgentResponse:
    """``Thought: <line>\\nAction: <action>`` → `AgentResponse` (`ActionParseError` naming
    the column otherwise)."""
    if not text.startswith(THOUGHT_PREFIX):
        raise ActionParseError(text, 0, repr(THOUGHT_PREFIX))
    end = text.find("\n")
    if end < 0:
        raise ActionParseError(text, len(text), repr(ACTION_PREFIX))
    thought = text[len(THOUGHT_PREFIX) : end]
    bad = next((i for i, c in enumerate(thought) if not " " <= c <= "~"), None)
    if bad is not None or not 1 <= len(thought) <= MAX_THOUGHT:
        column = len(THOUGHT_PREFIX) + (bad if bad is not None else min(len(thought), MAX_THOUGHT))
        raise ActionParseError(
            text, column, f"a thought of 1-{MAX_THOUGHT} printable ASCII characters"
        )
    if not text.startswith(ACTION_PREFIX, end):
        raise ActionParseError(text, end, repr(ACTION_PREFIX))
    start = end + len(ACTION_PREFIX)
    try:
        action = parse_action(text[start:], screen)
    except ActionParseError as exc:
        raise ActionParseError(text, start + exc.column, exc.expected) from None
    return AgentResponse(thought, action)


def response_thought(text: str) -> str:
    """The thought a response starts with (its first line after ``Thought: ``, at most
    `MAX_THOUGHT` characters), or "" when it does not start with one — read leniently, for
    the next step's prompt (`lmforge.agents.agent_data.agent_prompt`), so an unparseable
    response still shows what it thought."""
    if not text.startswith(THOUGHT_PREFIX):
        return ""
    line = text[len(THOUGHT_PREFIX) :].split("\n", 1)[0]
    return "".join(c for c in line if " " <= c <= "~")[:MAX_THOUGHT].strip()


def action_point(action: Action) -> tuple[int, int] | None:
    """The screen point an action acts on (a drag's start), or None (type, hotkey, …)."""
    if isinstance(action, Drag):
        return action.x1, action.y1
    if isinstance(action, (Click, LeftDouble, RightSingle, Scroll)):
        return action.x, action.y
    return None


__all__ = [
    "ACTION_NAMES",
    "ACTION_PREFIX",
    "ACTION_SIGNATURES",
    "KEYS",
    "MAX_CONTENT",
    "MAX_HOTKEY_KEYS",
    "MAX_THOUGHT",
    "SCROLL_DIRECTIONS",
    "THOUGHT_PREFIX",
    "Action",
    "ActionParseError",
    "AgentResponse",
    "CallUser",
    "Click",
    "Drag",
    "Finished",
    "Hotkey",
    "LeftDouble",
    "RightSingle",
    "Scroll",
    "Type",
    "Wait",
    "action_point",
    "format_action",
    "format_response",
    "parse_action",
    "parse_response",
    "quote",
    "response_thought",
]
