"""Rendering: deterministic pixels, themes that differ, state that shows (a tick, typed
text, an open dropdown, a dialog) and only where its widget is."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lmforge.agents.layout import relayout_overlays
from lmforge.agents.render import THEMES, Painter, render_window
from lmforge.agents.tasks import sample_task


def pixels(win) -> np.ndarray:
    return np.asarray(render_window(win))


def test_rendering_is_deterministic():
    task = sample_task(3, "heldout")
    a, b = pixels(task.fresh_window()), pixels(sample_task(3, "heldout").fresh_window())
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert hashlib.sha256(a.tobytes()).digest() == hashlib.sha256(b.tobytes()).digest()


def test_themes_change_colours():
    win = sample_task(0, template="login_remember").fresh_window()
    shots = []
    for theme in THEMES:
        win.theme = theme
        shots.append(pixels(win))
    for i in range(len(shots)):
        for j in range(i + 1, len(shots)):
            assert not np.array_equal(shots[i], shots[j])
    with pytest.raises(ValueError, match="unknown theme"):
        Painter(render_window(win), "neon")


def changed_region(a: np.ndarray, b: np.ndarray):
    ys, xs = np.nonzero(np.any(a != b, axis=-1))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def inside(region, box) -> bool:
    return (
        box[0] <= region[0] and box[1] <= region[1] and region[2] <= box[2] and region[3] <= box[3]
    )


def test_state_changes_show_where_the_widget_is():
    win = sample_task(0, template="login_remember").fresh_window()
    before = pixels(win)
    box = win.find("remember")
    box.checked = True
    after = pixels(win)
    assert inside(changed_region(before, after), box.mark_box)
    field = win.find("user")
    field.text = "bob"
    typed = pixels(win)
    assert inside(changed_region(after, typed), field.box)


def test_dropdown_and_dialog_draw_on_top():
    task = sample_task(1, template="dropdown_save")
    win = task.fresh_window()
    before = pixels(win)
    drop = next(w for w in win.walk() if w.kind == "dropdown")
    drop.open = True
    relayout_overlays(win)
    region = changed_region(before, pixels(win))
    lo = min(b[1] for b in drop.option_boxes)
    hi = max(b[3] for b in drop.option_boxes)
    assert region[1] >= min(lo, drop.box[1]) and region[3] <= max(hi, drop.box[3])
    dlg = sample_task(2, template="dialog_tick").fresh_window()
    shot = pixels(dlg)
    dlg.dialog = None
    region = changed_region(shot, pixels(dlg))
    assert region[0] >= 0 and region[2] - region[0] > 64  # the message box spans the screen
