"""Column layout of a `Window`: every widget's screen box from a `Geometry` (margins, row
height, label column, gaps).

    layout_window(win, Geometry(row=12))

Widgets go top to bottom below the title bar, one row each (a radio group one per option
plus its caption, a list or pane its visible rows); consecutive buttons share a row, left to
right; a text field or dropdown has its caption in a label column to the left; a tab bar
splits its width among the tabs and lays each page out below it; a scroll pane places its
children relative to its offset (those out of view lie outside the viewport and are never
shown or hit); an open dropdown's options drop below it, or above when the screen ends
first; a dialog is centred on the screen.
"""

from __future__ import annotations

from lmforge.agents.widgets import (
    Button,
    Checkbox,
    Dialog,
    Dropdown,
    Geometry,
    ListView,
    RadioGroup,
    ScrollPane,
    Tabs,
    TextField,
    Widget,
    Window,
)


def layout_window(win: Window, g: Geometry) -> None:
    """Assign every widget's box: title bar, then the column; dialog centred on top."""
    win.geometry = g
    place_column(win.widgets, g.margin, g.row + g.margin, win.width - 2 * g.margin, g)
    if win.dialog is not None:
        place_dialog(win.dialog, win.width, win.height, g)
    relayout_overlays(win)


def place_column(ws: list[Widget], x: int, y: int, width: int, g: Geometry) -> int:
    """Lay ``ws`` out top to bottom (consecutive buttons share a row, left to right);
    returns the y below the last."""
    row_x = None
    for w in ws:
        if isinstance(w, Button) and row_x is not None:
            place(w, row_x, y - g.row - g.gap, x + width - row_x, g)
        else:
            y = place(w, x, y, width, g) + g.gap
        row_x = w.box[2] + 3 if isinstance(w, Button) else None
    return y


def place(w: Widget, x: int, y: int, width: int, g: Geometry) -> int:
    """Lay ``w`` out at (x, y) in a column ``width`` wide; returns the y below it."""
    h = g.row
    w.box = (x, y, x + width, y + h * w.rows())
    if isinstance(w, (TextField, Dropdown)):
        w.label_box = (x, y, x + g.label_width, y + h)
        w.box = (x + g.label_width, y, x + width, y + h)
    elif isinstance(w, Checkbox):
        m = h - 4
        w.mark_box = (x + 1, y + 2, x + 1 + m, y + 2 + m)
    elif isinstance(w, RadioGroup):
        w.option_boxes = [(x + 6, y + h * (i + 1), x + width, y + h * (i + 2))
                          for i in range(len(w.options))]  # fmt: skip
    elif isinstance(w, Button):
        text_w = 6 * len(w.label) + 8
        w.box = (x, y, min(x + width, x + text_w), y + h)
    elif isinstance(w, ListView):
        w.scrollbar_box = (x + width - g.scrollbar, y, x + width, y + h * w.visible)
    elif isinstance(w, ScrollPane):
        w.scrollbar_box = (x + width - g.scrollbar, y, x + width, y + h * w.visible)
        relayout_pane(w, g)
    elif isinstance(w, Tabs):
        tab_w = width // max(1, len(w.names))
        w.tab_boxes = [(x + i * tab_w, y, x + (i + 1) * tab_w, y + h) for i in range(len(w.names))]
        for page in w.pages:
            place_column(page, x + 2, y + h + g.gap, width - 4, g)
        w.box = (x, y, x + width, max([y + h] + [c.box[3] for p in w.pages for c in p]))
    return w.box[3]


def relayout_pane(p: ScrollPane, g: Geometry) -> None:
    """Place the pane's children so that child ``offset`` sits at the top; the others are
    placed above / below the viewport (off view, not hit)."""
    x0, y0 = p.box[0], p.box[1]
    width = p.scrollbar_box[0] - x0 - 1
    for i, c in enumerate(p.children):
        place(c, x0 + 1, y0 + (i - p.offset) * g.row, width, g)


def place_dialog(d: Dialog, width: int, height: int, g: Geometry) -> None:
    """A dialog box centred on the screen: title row, message row, button row."""
    w, h = width - 4 * g.margin, 3 * g.row + 3 * g.gap
    x0, y0 = (width - w) // 2, (height - h) // 2
    d.box = (x0, y0, x0 + w, y0 + h)
    d.close_box = (x0 + w - g.row, y0, x0 + w, y0 + g.row)
    d.message_box = (x0 + 2, y0 + g.row + g.gap, x0 + w - 2, y0 + 2 * g.row + g.gap)
    bx = x0 + 3
    for b in d.buttons:
        place(b, bx, y0 + 2 * g.row + 2 * g.gap, w - 6, g)
        bx = b.box[2] + 3


def relayout_overlays(win: Window) -> None:
    """Option boxes of open dropdowns: below the box, or above it when they would leave the
    screen."""
    g = win.geometry
    for w in win.walk():
        if isinstance(w, Dropdown):
            n = len(w.options) * g.row
            top = w.box[3] if w.box[3] + n <= win.height else w.box[1] - n
            w.option_boxes = [(w.box[0], top + i * g.row, w.box[2], top + (i + 1) * g.row)
                              for i in range(len(w.options))] if w.open else []  # fmt: skip


__all__ = [
    "layout_window",
    "place",
    "place_column",
    "place_dialog",
    "relayout_overlays",
    "relayout_pane",
]
