"""Zhao's grid world: rewards of single moves by hand, and v* against shortest paths."""

from collections import deque

import numpy as np
import pytest

from lmforge.rl import GridWorld, value_iteration
from lmforge.rl.gridworld import BOOK_FORBIDDEN, BOOK_TARGET


def move(world, mdp, cell, action):
    s = world.state(*cell)
    a = world.action_names.index(action)
    nxt = int(np.argmax(mdp.P[s, a]))
    return divmod(nxt, world.cols), mdp.R[s, a, nxt]


def test_rewards_of_single_moves():
    world = GridWorld(r_forbidden=-10, r_boundary=-1, r_target=1)
    mdp = world.mdp()
    assert move(world, mdp, (0, 0), "up") == ((0, 0), -1)  # bounced back
    assert move(world, mdp, (0, 0), "left") == ((0, 0), -1)
    assert move(world, mdp, (0, 1), "down") == ((1, 1), -10)  # into a forbidden cell
    assert move(world, mdp, (1, 1), "stay") == ((1, 1), -10)  # staying there too
    assert move(world, mdp, (3, 3), "left") == ((3, 2), 1)  # into the target
    assert move(world, mdp, (3, 2), "stay") == ((3, 2), 1)  # the task is continuing
    assert move(world, mdp, (0, 0), "right") == ((0, 1), 0)
    assert mdp.done.sum() == 0 and np.allclose(mdp.initial, 1 / 25)
    assert GridWorld(terminal_target=True).mdp().done.sum() == 5  # 4 neighbours + stay


def bfs_distances(world):
    """Moves to the target avoiding forbidden cells (a forbidden start may leave)."""
    forbidden = set(BOOK_FORBIDDEN)
    dist = {}
    for start in [(r, c) for r in range(world.rows) for c in range(world.cols)]:
        seen, queue = {start}, deque([(start, 0)])
        while queue:
            (r, c), d = queue.popleft()
            if (r, c) == BOOK_TARGET:
                dist[start] = d
                break
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                n = (r + dr, c + dc)
                if 0 <= n[0] < 5 and 0 <= n[1] < 5 and n not in forbidden and n not in seen:
                    seen.add(n)
                    queue.append((n, d + 1))
    return dist


def test_optimal_values_follow_shortest_paths():
    """With r_forbidden = −10 no shortcut pays: v*(s) = γ^{d−1}(1 + γ·10) = 10 γ^{max(d−1,0)}
    (d moves to the target, then +1 forever: 1/(1−γ) = 10 at γ = 0.9)."""
    world = GridWorld(r_forbidden=-10)
    v, policy = value_iteration(world.mdp(), gamma=0.9)
    for (r, c), d in bfs_distances(world).items():
        assert v[world.state(r, c)] == pytest.approx(10 * 0.9 ** max(d - 1, 0), abs=1e-6)
    assert world.action_names[policy[world.state(*BOOK_TARGET)]] == "stay"


def test_cells_outside_the_grid_are_refused():
    with pytest.raises(ValueError, match=r"\(5, 0\) is outside the 5×5 grid"):
        GridWorld(target=(5, 0))


def test_book_figure_of_optimal_values():
    """Zhao (2025), ch. 3 (r_boundary = r_forbidden = −1, r_target = 1, γ = 0.9): the
    optimal state values of the 5 × 5 example, to the one decimal the book prints."""
    book = [[5.8, 5.6, 6.2, 6.5, 5.8],
            [6.5, 7.2, 8.0, 7.2, 6.5],
            [7.2, 8.0, 10.0, 8.0, 7.2],
            [8.0, 10.0, 10.0, 10.0, 8.0],
            [7.2, 9.0, 10.0, 9.0, 8.1]]  # fmt: skip
    v, _ = value_iteration(GridWorld().mdp(), gamma=0.9)
    assert np.allclose(v.reshape(5, 5), book, atol=0.05)
