"""Showing tabular results: the value table and the policy as arrows (text), and PNGs of
values, the policy and learning curves (written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.io import atomic_path

__all__ = ["ARROWS", "policy_arrows", "format_values", "format_policy", "plot_values_and_policy",
           "plot_learning_curves"]  # fmt: skip

ARROWS = {"up": "↑", "down": "↓", "left": "←", "right": "→", "stay": "○"}


def policy_arrows(policy: np.ndarray, action_names: tuple[str, ...]) -> list[str]:
    """One symbol per state (the greedy action of a stochastic policy)."""
    policy = np.asarray(policy)
    greedy = policy.argmax(1) if policy.ndim == 2 else policy.astype(int)
    names = action_names or tuple(str(a) for a in range(int(greedy.max()) + 1))
    return [ARROWS.get(names[a], names[a]) if a < len(names) else str(a) for a in greedy]


def grid_shape(num_states: int, shape: tuple[int, int] | None) -> tuple[int, int]:
    return shape if shape is not None else (1, num_states)


def format_values(v: np.ndarray, shape: tuple[int, int] | None = None) -> str:
    """The value table, one grid row per line."""
    rows, cols = grid_shape(len(v), shape)
    grid = np.asarray(v).reshape(rows, cols)
    return "\n".join(" ".join(f"{x:7.2f}" for x in row) for row in grid)


def format_policy(
    policy: np.ndarray, action_names: tuple[str, ...], shape: tuple[int, int] | None = None,
    marks: dict[int, str] | None = None,
) -> str:  # fmt: skip
    """The policy as arrows, one grid row per line (``marks`` overrides cells, e.g. holes)."""
    arrows = policy_arrows(policy, action_names)
    for s, m in (marks or {}).items():
        arrows[s] = m
    rows, cols = grid_shape(len(arrows), shape)
    return "\n".join(" ".join(arrows[r * cols : (r + 1) * cols]) for r in range(rows))


def plot_values_and_policy(
    v: np.ndarray,
    policy: np.ndarray,
    action_names: tuple[str, ...],
    shape: tuple[int, int] | None,
    path: str | Path,
    title: str = "",
) -> Path:
    """A PNG: the values as a heat map with each cell's value and greedy-action arrow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = grid_shape(len(v), shape)
    grid = np.asarray(v).reshape(rows, cols)
    arrows = policy_arrows(policy, action_names)
    fig, ax = plt.subplots(figsize=(max(3, cols * 0.9), max(2.5, rows * 0.9)))
    im = ax.imshow(grid, cmap="viridis")
    for r in range(rows):
        for c in range(cols):
            ax.text(c, r, f"{grid[r, c]:.1f}\n{arrows[r * cols + c]}", ha="center",
                    va="center", color="w", fontsize=8)  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def plot_learning_curves(curves: dict[str, list[float]], path: str | Path,
                         ylabel: str = "episode return", window: int = 20) -> Path:  # fmt: skip
    """A PNG of each curve and its moving average over ``window`` points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in curves.items():
        ys = np.asarray(ys, dtype=np.float64)
        line = ax.plot(ys, alpha=0.3)[0]
        if len(ys) >= window:
            smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(window - 1, len(ys)), smooth, color=line.get_color(), label=name)
        else:
            line.set_label(name)
    ax.set_xlabel("episode")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
