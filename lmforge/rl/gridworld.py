"""The grid world of Zhao's *Mathematical Foundations of Reinforcement Learning* (2025), ch. 1.

A rows × cols board; the agent moves up, down, left, right or stays. Bumping into the
boundary leaves it in place with reward ``r_boundary``; entering (or staying in) a forbidden
cell is allowed and earns ``r_forbidden``; entering (or staying in) the target earns
``r_target``; every other move earns ``r_other``. The task is continuing (the target is not
terminal) unless ``terminal_target`` is set. The default board is the book's 5 × 5 example:
forbidden cells (1,1), (1,2), (2,2), (3,1), (3,3), (4,1) and the target (3,2), as (row, col)
from the top-left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lmforge.rl.mdp import TabularMDP

__all__ = ["GridWorld", "GRID_ACTIONS", "BOOK_FORBIDDEN", "BOOK_TARGET"]

GRID_ACTIONS: tuple[tuple[str, int, int], ...] = (
    ("up", -1, 0),
    ("down", 1, 0),
    ("left", 0, -1),
    ("right", 0, 1),
    ("stay", 0, 0),
)
BOOK_FORBIDDEN: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 2), (3, 1), (3, 3), (4, 1))
BOOK_TARGET: tuple[int, int] = (3, 2)


@dataclass
class GridWorld:
    """A grid world's layout and rewards; `mdp()` turns it into a `TabularMDP` (state =
    row · cols + col, the start distribution uniform unless ``start`` is given)."""

    rows: int = 5
    cols: int = 5
    forbidden: tuple[tuple[int, int], ...] = BOOK_FORBIDDEN
    target: tuple[int, int] = BOOK_TARGET
    r_boundary: float = -1.0
    r_forbidden: float = -1.0
    r_target: float = 1.0
    r_other: float = 0.0
    terminal_target: bool = False
    start: tuple[int, int] | None = None
    action_names: tuple[str, ...] = field(default=tuple(n for n, _, _ in GRID_ACTIONS))

    def __post_init__(self) -> None:
        cells = [*self.forbidden, self.target] + ([self.start] if self.start else [])
        for r, c in cells:
            if not (0 <= r < self.rows and 0 <= c < self.cols):
                raise ValueError(f"cell ({r}, {c}) is outside the {self.rows}×{self.cols} grid")

    def state(self, row: int, col: int) -> int:
        return row * self.cols + col

    def mdp(self) -> TabularMDP:
        S, A = self.rows * self.cols, len(GRID_ACTIONS)
        P = np.zeros((S, A, S))
        R = np.zeros((S, A, S))
        done = np.zeros((S, A, S))
        forbidden = set(map(tuple, self.forbidden))
        for r in range(self.rows):
            for c in range(self.cols):
                s = self.state(r, c)
                for a, (_, dr, dc) in enumerate(GRID_ACTIONS):
                    nr, nc = r + dr, c + dc
                    if not (0 <= nr < self.rows and 0 <= nc < self.cols):
                        nxt, reward = s, self.r_boundary
                    else:
                        nxt = self.state(nr, nc)
                        if (nr, nc) == tuple(self.target):
                            reward = self.r_target
                        elif (nr, nc) in forbidden:
                            reward = self.r_forbidden
                        else:
                            reward = self.r_other
                    P[s, a, nxt] = 1.0
                    R[s, a, nxt] = reward
                    if self.terminal_target and nxt == self.state(*self.target):
                        done[s, a, nxt] = 1.0
        if self.start is None:
            initial = np.full(S, 1.0 / S)
        else:
            initial = np.eye(S)[self.state(*self.start)]
        return TabularMDP(P, R, done, initial, shape=(self.rows, self.cols),
                          action_names=self.action_names)  # fmt: skip
