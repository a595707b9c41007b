"""Layout: every sampled window fits its screen, shown controls never overlap, captions sit
left of their inputs, tab pages share the space below the tab bar."""

from __future__ import annotations

import itertools

import pytest

from lmforge.agents.layout import layout_window
from lmforge.agents.task_templates import COMPOSED_TEMPLATES, TEMPLATES
from lmforge.agents.tasks import sample_task
from lmforge.agents.widgets import (
    Button,
    Geometry,
    Label,
    ScrollPane,
    Tabs,
    TextField,
    Window,
    clip_box,
)


def control_boxes(win):
    for w in win.walk(shown_only=True):
        if (
            isinstance(w, (Tabs, ScrollPane))
            or w is win.dialog
            or w in getattr(win.dialog, "buttons", [])
        ):
            continue
        yield w.wid, w.box


@pytest.mark.parametrize("template", sorted(TEMPLATES) + sorted(COMPOSED_TEMPLATES))
def test_windows_fit_and_controls_do_not_overlap(template):
    for seed in range(12):
        win = sample_task(seed, "heldout", template).window
        boxes = list(control_boxes(win))
        for _, (x0, y0, x1, y1) in boxes:
            assert 0 <= x0 < x1 <= win.width and win.geometry.row <= y0 < y1 <= win.height
        for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
            assert clip_box(ba, bb) is None, (template, seed, a, b, ba, bb)


def test_caption_left_of_input_and_button_row():
    win = Window("W", 120, 80, [Label("h", "Head"), TextField("t", "Name"), Button("a", "Go"),
                                Button("b", "Stop")])  # fmt: skip
    g = Geometry(margin=4, row=12, gap=2, label_width=40)
    layout_window(win, g)
    t = win.find("t")
    assert t.label_box == (4, 30, 44, 42) and t.box == (44, 30, 116, 42)
    a, b = win.find("a"), win.find("b")
    assert a.box[1] == b.box[1] == 44 and b.box[0] == a.box[2] + 3


def test_tab_pages_start_below_the_tab_bar():
    pages = [[TextField("x", "X")], [TextField("y", "Y"), TextField("z", "Z")]]
    win = Window("W", 120, 100, [Tabs("tabs", "T", names=["A", "B"], pages=pages)])
    layout_window(win, Geometry(margin=4, row=12, gap=2))
    tabs = win.find("tabs")
    assert tabs.tab_boxes == [(4, 16, 60, 28), (60, 16, 116, 28)]
    assert win.find("x").box[1] == win.find("y").box[1] == 30
    assert tabs.box[3] == win.find("z").box[3]
