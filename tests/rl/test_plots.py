"""Value tables and arrows as text; PNGs written."""

import numpy as np

from lmforge.rl.plots import (
    format_policy,
    format_values,
    plot_learning_curves,
    plot_values_and_policy,
    policy_arrows,
)

NAMES = ("up", "down", "left", "right", "stay")


def test_arrows_and_tables():
    assert policy_arrows(np.array([0, 1, 2, 3, 4]), NAMES) == ["↑", "↓", "←", "→", "○"]
    stochastic = np.array([[0.1, 0.7, 0.1, 0.05, 0.05], [0.0, 0.0, 0.0, 0.0, 1.0]])
    assert policy_arrows(stochastic, NAMES) == ["↓", "○"]
    assert format_policy(np.array([3, 1, 4, 0]), NAMES, (2, 2), marks={3: "■"}) == "→ ↓\n○ ■"
    assert format_values(np.array([1.0, -2.5, 10.0, 0.0]), (2, 2)) == (
        "   1.00   -2.50\n  10.00    0.00"
    )
    assert policy_arrows(np.array([1, 0]), ()) == ["1", "0"]  # no names: action indices


def test_pngs_are_written(tmp_path):
    v = np.arange(6.0)
    a = plot_values_and_policy(v, np.zeros(6, int), NAMES, (2, 3), tmp_path / "v.png", "t")
    b = plot_learning_curves({"q": list(np.linspace(0, 1, 50))}, tmp_path / "c.png")
    assert a.read_bytes()[:4] == b.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp"))  # written atomically
