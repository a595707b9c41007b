"""Monte Carlo control: returns by hand, first- vs every-visit credit, and MC basic /
exploring starts / ε-greedy reaching the planning optimum on small grids."""

import numpy as np
import pytest

from lmforge.rl import GridWorld, TabularEnv, evaluate_policy, value_iteration
from lmforge.rl.monte_carlo import (
    credit_episode,
    discounted_returns,
    mc_basic,
    mc_epsilon_greedy,
    mc_exploring_starts,
)


def test_discounted_returns_by_hand():
    g = discounted_returns([1.0, 0.0, 2.0], 0.5)
    assert np.allclose(g, [1 + 0.5 * 0 + 0.25 * 2, 0 + 0.5 * 2, 2.0])


def test_first_visit_and_every_visit_credit():
    steps = [(0, 0, 1.0), (0, 0, 0.0), (1, 0, 2.0)]  # (0, 0) visited twice; γ = 1
    q, n = np.zeros((2, 1)), np.zeros((2, 1))
    credit_episode(q, n, steps, 1.0, first_visit=True)
    assert q[0, 0] == 3.0 and n[0, 0] == 1
    q, n = np.zeros((2, 1)), np.zeros((2, 1))
    credit_episode(q, n, steps, 1.0, first_visit=False)
    assert q[0, 0] == pytest.approx((3.0 + 2.0) / 2) and n[0, 0] == 2


def test_mc_basic_finds_the_optimal_policy_of_the_book_grid():
    mdp = GridWorld().mdp()
    v_star, _ = value_iteration(mdp, gamma=0.9)
    q, policy = mc_basic(mdp, gamma=0.9, iterations=15, episode_length=60)
    # deterministic world: one episode per pair; truncation error ≤ γ^60 · 10 / (1 − γ)…
    assert np.allclose(evaluate_policy(mdp, policy, 0.9), v_star, atol=1e-6)


def small_world():
    return GridWorld(rows=3, cols=3, forbidden=((0, 2),), target=(2, 2), r_forbidden=-10)


def test_mc_exploring_starts_reaches_the_optimum():
    mdp = small_world().mdp()
    v_star, _ = value_iteration(mdp, gamma=0.9)
    for first_visit in (True, False):
        _, policy = mc_exploring_starts(mdp, gamma=0.9, episodes=1000, episode_length=30,
                                        first_visit=first_visit, seed=0)  # fmt: skip
        assert np.allclose(evaluate_policy(mdp, policy, 0.9), v_star, atol=1e-6)


def test_mc_epsilon_greedy_improves_on_its_start():
    mdp = GridWorld(rows=3, cols=3, forbidden=(), target=(2, 2)).mdp()
    v_star, _ = value_iteration(mdp, gamma=0.9)
    returns = []
    q, policy = mc_epsilon_greedy(TabularEnv(mdp, max_steps=40), gamma=0.9, episodes=300,
                                  epsilon=0.2, episode_length=40, returns=returns)  # fmt: skip
    assert policy.shape == (9, 5) and np.allclose(policy.sum(1), 1.0)
    assert policy.min() == pytest.approx(0.2 / 5)
    v_greedy = evaluate_policy(mdp, q.argmax(1), 0.9)
    v_uniform = evaluate_policy(mdp, np.full((9, 5), 0.2), 0.9)
    assert v_greedy.mean() > 0.9 * v_star.mean() > v_uniform.mean() + 3
