"""Pillow rendering of a `Window` to a screenshot (RGB uint8), deterministic: the font is
Pillow's bundled default (FreeType, no system fonts), nothing is anti-aliased differently
from run to run, and the same window always gives the same pixels.

    image = render_window(win)            # PIL.Image, win.width × win.height
    array = np.asarray(image)              # [H, W, 3] uint8

Themes (`THEMES`) set the colours of background, widgets, text, accents and selection, so
layouts can be held out by theme as well as by arrangement.

Every piece of text is placed by `text_layout` (the string shown after truncation, its
anchor, and one `Glyph` box per character), which `Painter.text` itself draws from, so the
glyph boxes of `render_window_glyphs` (the targets of the glyph objective,
`lmforge.agents.glyph`) can never disagree with the pixels.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

from lmforge.agents.widgets import (
    Box,
    Button,
    Checkbox,
    Dialog,
    Dropdown,
    Label,
    ListView,
    RadioGroup,
    ScrollPane,
    Tabs,
    TextField,
    Widget,
    Window,
)

# name → (background, panel, text, accent, selection, border)
THEMES: dict[str, tuple[str, str, str, str, str, str]] = {
    "light": ("#f2f2f2", "#ffffff", "#111111", "#2a6fdb", "#cfe0ff", "#888888"),
    "dark": ("#22252a", "#33373e", "#eeeeee", "#4fa3ff", "#3d5a80", "#777777"),
    "mint": ("#e6f4ee", "#fbfffd", "#10281c", "#1b9e5a", "#bfe8d2", "#6b8f7d"),
    "sand": ("#f3ead8", "#fffaf0", "#2b2113", "#c26a12", "#f5d7a8", "#9c8a6a"),
}
FONT_SIZE = 9


@lru_cache(maxsize=4)
def ui_font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font at ``size`` px (no system font is ever read)."""
    return ImageFont.load_default(size=size)


class Glyph(NamedTuple):
    """One drawn character: ``char`` and its ink box (x0, y0, x1, y1, px, x1/y1 exclusive)."""

    char: str
    box: Box


class TextLayout(NamedTuple):
    """Where `Painter.text` draws: the ``shown`` string (cut to the box), the anchor point
    ``(x, y)`` (left-middle, Pillow's ``"lm"``) and one `Glyph` per non-space character."""

    shown: str
    x: int
    y: int
    glyphs: tuple[Glyph, ...]


def _offsets(text: str, font) -> tuple[tuple[str, float, int, float, int], ...]:
    """Each inked character of ``text``: (char, ink left, top, right, bottom) relative to
    the anchor (left-middle); left/right from its pen position
    ``getlength(text[:k+1]) − getlength(text[k])`` (kerning as the layout engine does)."""
    out = []
    for k, ch in enumerate(text):
        if ch.isspace():
            continue
        pen = font.getlength(text[: k + 1]) - font.getlength(ch)
        left, top, right, bottom = font.getbbox(ch, anchor="lm")
        if bottom > top and right > left:  # has ink
            out.append((ch, pen + left, top, pen + right, bottom))
    return tuple(out)


@lru_cache(maxsize=1 << 16)
def _glyph_offsets(text: str) -> tuple[tuple[str, float, int, float, int], ...]:
    return _offsets(text, ui_font())


def _place(box: Box, text: str, centre: bool, font) -> tuple[str, int, int]:
    """``(shown, x, y)``: ``text`` cut from the end until it fits in the box width − 2, at
    x = box left + 1 (or centred), vertically centred (anchor left-middle)."""
    width = box[2] - box[0] - 2
    while text and font.getlength(text) > width:
        text = text[:-1]
    x = box[0] + 1
    if centre:
        x = (box[0] + box[2] - int(font.getlength(text))) // 2
    return text, x, (box[1] + box[3]) // 2


def _glyphs(shown: str, x: int, y: int, font) -> tuple[Glyph, ...]:
    """One `Glyph` per inked character of ``shown`` drawn at anchor ``(x, y)``."""
    offsets = _glyph_offsets(shown) if font is ui_font() else _offsets(shown, font)
    return tuple(Glyph(ch, (x + math.floor(left), y + top, max(x + math.floor(left) + 1,
                                                                 x + math.ceil(right)), y + bottom))
                 for ch, left, top, right, bottom in offsets)  # fmt: skip


def text_layout(box: Box, text: str, centre: bool = False, font=None) -> TextLayout:
    """The layout of ``text`` in ``box`` as `Painter.text` draws it: cut from the end until
    it fits in the box width − 2, at x = box left + 1 (or centred), vertically centred.
    Character k's pen position is ``getlength(shown[:k+1]) − getlength(shown[k])`` (so a
    kerning pair moves it as the layout engine does) and its box is
    ``font.getbbox(char, anchor="lm")`` (its ink extent, side bearings included) from
    there. Pure: depends only on its arguments and the (bundled) font."""
    font = font or ui_font()
    shown, x, y = _place(box, text, centre, font)
    return TextLayout(shown, x, y, _glyphs(shown, x, y, font))


def _inside(point: tuple[float, float], box: Box) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


class Painter:
    """Draws widgets with one theme's colours and the UI font. With ``glyphs=True`` it
    collects (in ``glyphs``) the `Glyph` of every character drawn that is still visible: a
    filled rectangle drawn later removes the glyphs whose centre it covers (a dialog or open
    dropdown over a label). Off, plain screenshots pay nothing for it."""

    def __init__(self, image: Image.Image, theme: str, glyphs: bool = True) -> None:
        if theme not in THEMES:
            raise ValueError(f"unknown theme {theme!r}; choose from {list(THEMES)}")
        self.draw = ImageDraw.Draw(image)
        self.bg, self.panel, self.fg, self.accent, self.select, self.border = THEMES[theme]
        self.font = ui_font()
        self.glyphs: list[Glyph] = []
        self.collect = glyphs

    def text(self, box: Box, text: str, colour: str | None = None, centre: bool = False) -> None:
        """``text`` in ``box``, vertically centred, cut to the box width (`text_layout`)."""
        shown, x, y = _place(box, text, centre, self.font)
        self.draw.text((x, y), shown, font=self.font, fill=colour or self.fg, anchor="lm")
        if self.collect:
            self.glyphs += _glyphs(shown, x, y, self.font)

    def rect(self, box: Box, fill: str | None, outline: str | None = None) -> None:
        self.draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=fill, outline=outline)
        if fill is not None and self.glyphs:
            self.glyphs = [g for g in self.glyphs if not _inside(glyph_centre(g), box)]

    def widget(self, w: Widget, focus: str | None) -> None:
        getattr(self, "draw_" + w.kind)(w, focus)

    def draw_label(self, w: Label, focus: str | None) -> None:
        self.text(w.box, w.label)

    def draw_button(self, w: Button, focus: str | None) -> None:
        self.rect(w.box, self.accent)
        self.text(w.box, w.label, colour=self.panel, centre=True)

    def draw_textfield(self, w: TextField, focus: str | None) -> None:
        self.text(w.label_box, w.label)
        self.rect(w.box, self.panel, self.accent if focus == w.wid else self.border)
        inner = (w.box[0] + 1, w.box[1], w.box[2] - 1, w.box[3])
        shown = w.text + ("|" if focus == w.wid else "")
        while shown and self.font.getlength(shown) > inner[2] - inner[0] - 2:
            shown = shown[1:]  # keep the end (the caret) in view, as text inputs do
        self.text(inner, shown)

    def draw_checkbox(self, w: Checkbox, focus: str | None) -> None:
        m = w.mark_box
        self.rect(m, self.panel, self.border)
        if w.checked:
            self.draw.line((m[0] + 1, (m[1] + m[3]) // 2, (m[0] + m[2]) // 2, m[3] - 2,
                            m[2] - 2, m[1] + 1), fill=self.accent, width=2)  # fmt: skip
        self.text((m[2] + 2, w.box[1], w.box[2], w.box[3]), w.label)

    def draw_radio(self, w: RadioGroup, focus: str | None) -> None:
        self.text((w.box[0], w.box[1], w.box[2], w.option_boxes[0][1]), w.label)
        for i, b in enumerate(w.option_boxes):
            r = (b[3] - b[1] - 4) // 2
            cx, cy = b[0] + r + 1, (b[1] + b[3]) // 2
            self.draw.ellipse(
                (cx - r, cy - r, cx + r, cy + r), fill=self.panel, outline=self.border
            )
            if i == w.selected:
                self.draw.ellipse(
                    (cx - r + 2, cy - r + 2, cx + r - 2, cy + r - 2), fill=self.accent
                )
            self.text((cx + r + 2, b[1], b[2], b[3]), w.options[i])

    def draw_dropdown(self, w: Dropdown, focus: str | None) -> None:
        self.text(w.label_box, w.label)
        self.rect(w.box, self.panel, self.border)
        self.text((w.box[0] + 1, w.box[1], w.box[2] - 8, w.box[3]), w.options[w.selected])
        cx, cy = w.box[2] - 5, (w.box[1] + w.box[3]) // 2
        self.draw.polygon([(cx - 3, cy - 1), (cx + 3, cy - 1), (cx, cy + 2)], fill=self.fg)

    def dropdown_options(self, w: Dropdown) -> None:
        for i, b in enumerate(w.option_boxes):
            self.rect(b, self.select if i == w.selected else self.panel, self.border)
            self.text(b, w.options[i])

    def draw_list(self, w: ListView, focus: str | None) -> None:
        self.rect(w.box, self.panel, self.border)
        for i in range(w.offset, min(len(w.items), w.offset + w.visible)):
            b = w.row_box(i)
            if i == w.selected:
                self.rect(b, self.select)
            self.text((b[0] + 1, b[1], b[2], b[3]), w.items[i])
        self.scrollbar(w.scrollbar_box, w.thumb_box())

    def draw_pane(self, w: ScrollPane, focus: str | None) -> None:
        self.rect(w.box, None, self.border)
        self.scrollbar(w.scrollbar_box, w.thumb_box())

    def scrollbar(self, track: Box, thumb: Box) -> None:
        self.rect(track, self.bg, self.border)
        self.rect(thumb, self.border)

    def draw_tabs(self, w: Tabs, focus: str | None) -> None:
        for i, b in enumerate(w.tab_boxes):
            active = i == w.active  # the open tab: panel colour, accent text
            self.rect(b, self.panel if active else self.bg, self.border)
            self.text(b, w.names[i], colour=self.accent if active else None, centre=True)
        if w.tab_boxes:
            y = w.tab_boxes[0][3] - 1
            self.draw.line((w.box[0], y, w.box[2] - 1, y), fill=self.accent)

    def draw_dialog(self, w: Dialog, focus: str | None) -> None:
        self.rect((w.box[0] + 2, w.box[1] + 2, w.box[2] + 2, w.box[3] + 2), self.border)
        self.rect(w.box, self.panel, self.fg)
        title = (w.box[0], w.box[1], w.box[2], w.close_box[3])
        self.rect(title, self.accent)
        self.text((title[0] + 2, title[1], w.close_box[0], title[3]), w.label, self.panel)
        self.text(w.close_box, "x", self.panel, centre=True)
        self.text(w.message_box, w.message)
        for b in w.buttons:
            self.draw_button(b, focus)


def glyph_centre(g: Glyph) -> tuple[float, float]:
    """The centre (x, y) of a glyph's box, px."""
    return (g.box[0] + g.box[2]) / 2, (g.box[1] + g.box[3]) / 2


def render_window(win: Window) -> Image.Image:
    """The screenshot of ``win``: background, title bar, shown widgets, open dropdown
    options, then the dialog (dimming nothing, so the window stays readable behind it)."""
    return _paint(win, glyphs=False)[0]


def render_window_glyphs(win: Window) -> tuple[Image.Image, list[Glyph]]:
    """`render_window`'s screenshot and the `Glyph` of every character visible on it (in
    drawing order), from the same drawing pass."""
    return _paint(win, glyphs=True)


def _paint(win: Window, glyphs: bool) -> tuple[Image.Image, list[Glyph]]:
    image = Image.new("RGB", (win.width, win.height), THEMES[win.theme][0])
    p = Painter(image, win.theme, glyphs)
    g = win.geometry
    p.rect((0, 0, win.width, g.row), p.accent)
    p.text((2, 0, win.width, g.row), win.title, p.panel)
    for w in win.walk(shown_only=True):
        if w is win.dialog:
            break
        p.widget(w, win.focus)
    drop = win.open_dropdown()
    if drop is not None:
        p.dropdown_options(drop)
    if win.dialog is not None:
        p.draw_dialog(win.dialog, win.focus)
    return image, p.glyphs


__all__ = [
    "FONT_SIZE",
    "THEMES",
    "Glyph",
    "Painter",
    "TextLayout",
    "glyph_centre",
    "render_window",
    "render_window_glyphs",
    "text_layout",
    "ui_font",
]
