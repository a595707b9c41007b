"""The widget tree of a GUI window: widgets with screen boxes, a column layout, hit testing
and the value snapshot that task checks compare.

    win = Window("Sign in", 128, 128, [TextField("user", "Username"), Checkbox("rem", "Remember me"),
                                       Button("ok", "Sign in")])
    layout_window(win, Geometry())   # lmforge.agents.layout
    win.hit(30, 40)          # → Hit(widget, part) or None

A box is ``(x0, y0, x1, y1)`` in screen pixels, half-open. Widgets are laid out top to
bottom in a column; a `Tabs` widget shows the page of its active tab, a `ScrollPane` and a
`ListView` show a window onto taller content (``offset`` in rows), a `Dropdown` that is open
draws its options over what lies below, and an open `Dialog` is modal: while it is open only
its parts can be hit. Interaction (what a click does) lives in `lmforge.agents.env`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Box = tuple[int, int, int, int]


def box_contains(box: Box, x: int, y: int) -> bool:
    """Whether pixel (x, y) lies in the half-open ``box``."""
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def box_center(box: Box) -> tuple[int, int]:
    """The integer centre pixel of ``box`` (always inside a non-empty box)."""
    return (box[0] + box[2] - 1) // 2, (box[1] + box[3] - 1) // 2


def clip_box(box: Box, clip: Box) -> Box | None:
    """``box`` ∩ ``clip``, or None when they do not overlap."""
    x0, y0 = max(box[0], clip[0]), max(box[1], clip[1])
    x1, y1 = min(box[2], clip[2]), min(box[3], clip[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def thumb_box(track: Box, count: int, visible: int, offset: int) -> Box:
    """A scrollbar thumb: its height the visible fraction of ``count`` rows, its top where
    ``offset`` lies between 0 and the last offset."""
    x0, y0, x1, y1 = track
    n = max(count, 1)
    h = max(3, (y1 - y0) * min(visible, n) // n)
    top = y0 + (y1 - y0 - h) * offset // max(1, count - visible)
    return (x0, top, x1, top + h)


@dataclass
class Geometry:
    """Layout numbers: margins, row height, label column width, gaps (randomised per task)."""

    margin: int = 4
    row: int = 12
    gap: int = 2
    label_width: int = 44
    scrollbar: int = 5


@dataclass
class Widget:
    """A widget: ``wid`` (unique id), its ``label`` and its screen box (set by the layout)."""

    wid: str
    label: str
    box: Box = (0, 0, 0, 0)
    kind = "widget"

    def rows(self) -> int:
        """How many layout rows the widget takes."""
        return 1

    def value(self) -> Any:
        """The state a task may check (None: the widget holds none)."""
        return None


@dataclass
class Label(Widget):
    kind = "label"


@dataclass
class Button(Widget):
    kind = "button"


@dataclass
class TextField(Widget):
    """A one-line text input; ``label_box`` holds its caption to the left."""

    text: str = ""
    label_box: Box = (0, 0, 0, 0)
    kind = "textfield"

    def value(self) -> str:
        return self.text


@dataclass
class Checkbox(Widget):
    """A tick box with its label; the whole row is clickable, ``mark_box`` is the square."""

    checked: bool = False
    mark_box: Box = (0, 0, 0, 0)
    kind = "checkbox"

    def value(self) -> bool:
        return self.checked


@dataclass
class RadioGroup(Widget):
    """A caption row then one row per option; exactly one option is selected."""

    options: list[str] = field(default_factory=list)
    selected: int = 0
    option_boxes: list[Box] = field(default_factory=list)
    kind = "radio"

    def rows(self) -> int:
        return 1 + len(self.options)

    def value(self) -> str:
        return self.options[self.selected]


@dataclass
class Dropdown(Widget):
    """A combo box: closed it shows the selection; open, its options overlay the rows below
    (or above, when the screen ends first) in ``option_boxes``."""

    options: list[str] = field(default_factory=list)
    selected: int = 0
    open: bool = False
    label_box: Box = (0, 0, 0, 0)
    option_boxes: list[Box] = field(default_factory=list)
    kind = "dropdown"

    def value(self) -> str:
        return self.options[self.selected]


@dataclass
class ListView(Widget):
    """A scrollable list of ``items``, ``visible`` rows at a time from row ``offset``; a
    click selects a row, a double click (or Enter on the selection) opens it."""

    items: list[str] = field(default_factory=list)
    visible: int = 4
    offset: int = 0
    selected: int | None = None
    opened: str | None = None
    scrollbar_box: Box = (0, 0, 0, 0)
    kind = "list"

    def rows(self) -> int:
        return self.visible

    def max_offset(self) -> int:
        return max(0, len(self.items) - self.visible)

    def row_box(self, index: int) -> Box | None:
        """The screen box of item ``index``, or None when it is scrolled out of view."""
        i = index - self.offset
        if not 0 <= i < self.visible or index >= len(self.items):
            return None
        h = (self.box[3] - self.box[1]) // self.visible
        y = self.box[1] + i * h
        return (self.box[0], y, self.scrollbar_box[0], y + h)

    def thumb_box(self) -> Box:
        return thumb_box(self.scrollbar_box, len(self.items), self.visible, self.offset)


@dataclass
class ScrollPane(Widget):
    """A pane of ``visible`` rows onto a column of ``children`` (one row each), scrolled by
    ``offset`` rows; a child is shown (and can be hit) only when its row is fully in view."""

    children: list[Widget] = field(default_factory=list)
    visible: int = 3
    offset: int = 0
    scrollbar_box: Box = (0, 0, 0, 0)
    kind = "pane"

    def rows(self) -> int:
        return self.visible

    def max_offset(self) -> int:
        return max(0, len(self.children) - self.visible)

    def shown(self) -> list[Widget]:
        return self.children[self.offset : self.offset + self.visible]

    def thumb_box(self) -> Box:
        return thumb_box(self.scrollbar_box, len(self.children), self.visible, self.offset)


@dataclass
class Tabs(Widget):
    """A tab bar (one header box per tab) over the widgets of the active tab's page."""

    names: list[str] = field(default_factory=list)
    pages: list[list[Widget]] = field(default_factory=list)
    active: int = 0
    tab_boxes: list[Box] = field(default_factory=list)
    kind = "tabs"

    def rows(self) -> int:
        return 1 + max((sum(w.rows() for w in p) for p in self.pages), default=0)


@dataclass
class Dialog(Widget):
    """A modal message box: title (``label``), ``message``, buttons and a close box ×."""

    message: str = ""
    buttons: list[Button] = field(default_factory=list)
    close_box: Box = (0, 0, 0, 0)
    message_box: Box = (0, 0, 0, 0)
    kind = "dialog"


@dataclass(frozen=True)
class Hit:
    """What a point hits: the widget and which part (an option / row / tab index, or a name
    such as "mark", "scrollbar", "close")."""

    widget: Widget
    part: int | str | None = None


@dataclass
class Window:
    """A window: title bar, a column of widgets, an optional modal dialog; ``focus`` is the
    focused text field's id; ``select_all`` marks its text as selected (next typing replaces
    it); ``events`` logs what the user did that a task may check."""

    title: str
    width: int
    height: int
    widgets: list[Widget]
    dialog: Dialog | None = None
    theme: str = "light"
    focus: str | None = None
    select_all: bool = False
    events: list[tuple[str, str]] = field(default_factory=list)
    geometry: Geometry = field(default_factory=Geometry)

    def walk(self, shown_only: bool = False) -> Iterator[Widget]:
        """Every widget (tab pages and pane children included, the dialog's buttons too);
        ``shown_only``: only those on screen now."""

        def visit(ws: list[Widget]) -> Iterator[Widget]:
            for w in ws:
                yield w
                if isinstance(w, Tabs):
                    for i, page in enumerate(w.pages):
                        if not shown_only or i == w.active:
                            yield from visit(page)
                elif isinstance(w, ScrollPane):
                    yield from visit(w.shown() if shown_only else w.children)

        yield from visit(self.widgets)
        if self.dialog is not None:
            yield self.dialog
            yield from self.dialog.buttons

    def find(self, wid: str) -> Widget:
        """The widget with id ``wid`` (KeyError naming it otherwise)."""
        for w in self.walk():
            if w.wid == wid:
                return w
        raise KeyError(f"no widget {wid!r} in window {self.title!r}")

    def values(self) -> dict[str, Any]:
        """Id → value of every widget that holds one (what task checks compare)."""
        return {w.wid: w.value() for w in self.walk() if w.value() is not None}

    def open_dropdown(self) -> Dropdown | None:
        return next((w for w in self.walk(True) if isinstance(w, Dropdown) and w.open), None)

    def container_of(self, wid: str) -> tuple[Widget | None, int | None]:
        """The `Tabs` (and page index) or `ScrollPane` (and child index) holding ``wid``."""
        for w in self.walk():
            if isinstance(w, Tabs):
                for i, page in enumerate(w.pages):
                    if any(c.wid == wid for c in page):
                        return w, i
            elif isinstance(w, ScrollPane):
                for i, c in enumerate(w.children):
                    if c.wid == wid:
                        return w, i
        return None, None

    def hit(self, x: int, y: int) -> Hit | None:
        """The topmost widget part at (x, y): the dialog when one is open (modal), else an
        open dropdown's options, then the shown widgets."""
        if self.dialog is not None:
            d = self.dialog
            if box_contains(d.close_box, x, y):
                return Hit(d, "close")
            for b in d.buttons:
                if box_contains(b.box, x, y):
                    return Hit(b)
            return Hit(d) if box_contains(d.box, x, y) else None
        drop = self.open_dropdown()
        if drop is not None:
            for i, b in enumerate(drop.option_boxes):
                if box_contains(b, x, y):
                    return Hit(drop, i)
        for w in self.walk(shown_only=True):
            part = hit_part(w, x, y)
            if part is not False:
                return Hit(w, part)
        return None


def hit_part(w: Widget, x: int, y: int) -> int | str | None | bool:
    """Which part of ``w`` (x, y) hits: an index, a part name, None (the widget itself), or
    False (it misses). Containers answer only for their own chrome (tab headers, scrollbar)."""
    if isinstance(w, Tabs):
        return next((i for i, b in enumerate(w.tab_boxes) if box_contains(b, x, y)), False)
    if isinstance(w, (ScrollPane, ListView)):
        if box_contains(w.scrollbar_box, x, y):
            return "scrollbar"
        if isinstance(w, ListView) and box_contains(w.box, x, y):
            rows = (w.row_box(i) for i in range(len(w.items)))
            return next((i for i, b in enumerate(rows, 0) if b and box_contains(b, x, y)), None)
        return False
    if isinstance(w, RadioGroup):
        return next((i for i, b in enumerate(w.option_boxes) if box_contains(b, x, y)), False)
    if isinstance(w, (Label, Dialog)):
        return False
    return None if box_contains(w.box, x, y) else False


__all__ = [
    "Box",
    "Button",
    "Checkbox",
    "Dialog",
    "Dropdown",
    "Geometry",
    "Hit",
    "Label",
    "ListView",
    "RadioGroup",
    "ScrollPane",
    "Tabs",
    "TextField",
    "Widget",
    "Window",
    "box_center",
    "box_contains",
    "clip_box",
    "hit_part",
    "thumb_box",
]
