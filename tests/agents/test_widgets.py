"""The widget tree: box helpers, hit testing (modal dialog, dropdown overlay on top, hidden
tab pages and scrolled-out pane children never hit), values, containers, scrollbar thumbs."""

from __future__ import annotations

import pytest

from lmforge.agents.layout import layout_window, relayout_overlays, relayout_pane
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
    Window,
    box_center,
    box_contains,
    clip_box,
    thumb_box,
)


def test_box_helpers():
    assert box_contains((0, 0, 2, 2), 1, 1) and not box_contains((0, 0, 2, 2), 2, 1)
    for box in [(0, 0, 1, 1), (3, 4, 10, 9), (5, 5, 6, 20)]:
        assert box_contains(box, *box_center(box))
    assert clip_box((0, 0, 10, 10), (5, 5, 20, 20)) == (5, 5, 10, 10)
    assert clip_box((0, 0, 5, 5), (5, 5, 9, 9)) is None


def test_thumb_spans_track_from_first_to_last_offset():
    track = (100, 10, 105, 70)
    assert thumb_box(track, 10, 5, 0)[1] == 10
    assert thumb_box(track, 10, 5, 5)[3] == 70
    assert thumb_box(track, 10, 5, 0)[3] - thumb_box(track, 10, 5, 0)[1] == 30
    assert thumb_box(track, 3, 5, 0) == (100, 10, 105, 70)  # everything visible


def window() -> Window:
    pane = ScrollPane(
        "pane", "P", children=[Checkbox(f"c{i}", f"box {i}") for i in range(5)], visible=2
    )
    tabs = Tabs("tabs", "T", names=["A", "B"],
                pages=[[TextField("name", "Name", text="x")], [Checkbox("hidden", "Hidden")]])  # fmt: skip
    win = Window("W", 128, 200, [
        tabs, Dropdown("size", "Size", options=["S", "M", "L"]), pane,
        RadioGroup("r", "R", options=["a", "b"], selected=1),
        ListView("list", "L", items=[f"item {i}" for i in range(6)], visible=3),
        Button("ok", "OK"), Button("no", "No"),
    ])  # fmt: skip
    layout_window(win, Geometry())
    return win


def test_values_cover_hidden_widgets_too():
    win = window()
    assert win.values() == {"name": "x", "hidden": False, "size": "S",
                            **{f"c{i}": False for i in range(5)}, "r": "b"}  # fmt: skip


def test_hits_each_part():
    win = window()
    tabs, drop = win.find("tabs"), win.find("size")
    assert win.hit(*box_center(tabs.tab_boxes[1])).part == 1
    assert win.hit(*box_center(win.find("name").box)).widget.wid == "name"
    assert win.hit(*box_center(drop.box)).widget is drop
    assert win.hit(*box_center(drop.label_box)) is None  # a caption is not a control
    lv = win.find("list")
    assert win.hit(*box_center(lv.row_box(2))).part == 2
    assert win.hit(*box_center(lv.scrollbar_box)).part == "scrollbar"
    r = win.find("r")
    assert win.hit(*box_center(r.option_boxes[0])).part == 0
    ok, no = win.find("ok"), win.find("no")
    assert ok.box[1] == no.box[1] and no.box[0] > ok.box[2]  # buttons share a row
    assert win.hit(*box_center(no.box)).widget is no


def test_hidden_tab_page_and_scrolled_out_children_are_not_hit():
    win = window()
    hidden, pane = win.find("hidden"), win.find("pane")
    assert hidden not in list(win.walk(shown_only=True))
    assert all(win.hit(*box_center(c.box)) is None or win.hit(*box_center(c.box)).widget is not c
               for c in pane.children[2:])  # fmt: skip
    assert win.hit(*box_center(pane.children[1].box)).widget is pane.children[1]
    pane.offset = 3
    relayout_pane(pane, win.geometry)
    assert [c.wid for c in pane.shown()] == ["c3", "c4"]
    assert win.hit(*box_center(pane.children[3].box)).widget.wid == "c3"
    assert pane.children[3].box[1] == pane.box[1]
    assert win.container_of("c4") == (pane, 4) and win.container_of("hidden") == (
        win.find("tabs"),
        1,
    )
    assert win.container_of("ok") == (None, None)


def test_open_dropdown_overlays_what_lies_below():
    win = window()
    drop = win.find("size")
    drop.open = True
    relayout_overlays(win)
    assert len(drop.option_boxes) == 3 and drop.option_boxes[0][1] == drop.box[3]
    hit = win.hit(*box_center(drop.option_boxes[2]))
    assert hit.widget is drop and hit.part == 2


def test_dropdown_opens_upward_at_the_bottom_of_the_screen():
    win = Window("W", 100, 60, [TextField("a", "A"), TextField("b", "B"), TextField("c", "C"),
                                Dropdown("d", "D", options=["1", "2", "3"], open=True)])  # fmt: skip
    layout_window(win, Geometry())
    d = win.find("d")
    assert d.option_boxes[-1][3] == d.box[1] and d.option_boxes[0][1] >= 0


def test_dialog_is_modal():
    win = window()
    win.dialog = Dialog("dlg", "Hi", message="m", buttons=[Button("dok", "OK")])
    layout_window(win, Geometry())
    d = win.dialog
    assert win.hit(*box_center(d.close_box)).part == "close"
    assert win.hit(*box_center(d.buttons[0].box)).widget.wid == "dok"
    assert win.hit(*box_center(win.find("tabs").tab_boxes[0])) is None  # outside the dialog
    assert win.hit(*box_center(d.message_box)).widget is d


def test_find_names_missing_widget():
    with pytest.raises(KeyError, match="no widget 'zzz' in window 'W'"):
        window().find("zzz")
