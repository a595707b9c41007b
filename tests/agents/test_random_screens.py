"""Random screens (`lmforge.agents.random_screens`): deterministic per seed, varied (every
theme and widget kind, labels on many rows), on screen, with unique names."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lmforge.agents.agent_data import screen_elements
from lmforge.agents.layout import layout_window
from lmforge.agents.random_screens import (
    KIND_WEIGHTS,
    LabelPool,
    fits,
    random_widget,
    random_window,
)
from lmforge.agents.render import THEMES, render_window
from lmforge.agents.widgets import Button, Geometry, Window


def test_same_seed_same_screen_and_screens_vary():
    a, b = random_window(random.Random(3)), random_window(random.Random(3))
    assert (render_window(a).tobytes(), a.theme) == (render_window(b).tobytes(), b.theme)
    wins = [random_window(random.Random(s)) for s in range(60)]
    assert {w.theme for w in wins} == set(THEMES)
    kinds = Counter(type(w).__name__ for win in wins for w in win.widgets)
    assert {"Checkbox", "Button", "TextField", "Dropdown", "RadioGroup", "ListView", "Tabs"} <= set(
        kinds
    )
    # the same label lands on many different rows: no fixed place per name
    rows = {e.box[1] for win in wins for e in screen_elements(win) if e.kind == "checkbox"}
    assert len(rows) >= 15
    assert any(w.dialog is not None for w in wins) and any(w.open_dropdown() for w in wins)


def test_screens_fit_and_names_are_unique():
    for seed in range(100):
        win = random_window(random.Random(seed))
        assert fits(win) and win.widgets
        elements = screen_elements(win)
        assert elements
        for e in elements:
            assert 0 <= e.box[0] < e.box[2] <= 128 and 0 <= e.box[1] < e.box[3] <= 128, e
        names = [(e.kind, e.label) for e in elements]
        assert len(names) == len(set(names)), names
        labels = [e.label for e in elements if e.kind != "close box"]
        assert len(labels) == len(set(labels)), labels


def test_label_pool_and_widgets():
    pool = LabelPool(random.Random(0))
    assert len(set(pool.take(["a", "b", "c"], 3))) == 3
    assert pool.take(["a", "b"]) is None  # all used
    for kind in KIND_WEIGHTS:
        assert random_widget(kind, random.Random(1), LabelPool(random.Random(1)), 0)
    with pytest.raises(ValueError, match="unknown widget kind"):
        random_widget("slider", random.Random(0), pool, 0)
    win = Window("t", 128, 128, [Button("b", "A very long button label here")])
    layout_window(win, Geometry())
    assert not fits(win)  # the label does not fit the screen's width
