"""Value-function approximation: the TD fixed point in closed form, linear TD(0) converging
to it, one-hot features = the tabular values, DQN finding q* on a small grid."""

import numpy as np
import pytest
import torch

from lmforge.rl import GridWorld, TabularEnv, evaluate_policy, value_iteration
from lmforge.rl.approximation import (
    dqn,
    fourier_features,
    linear_td0,
    one_hot_features,
    polynomial_features,
    stationary_distribution,
    td_fixed_point,
)
from lmforge.rl.planning import policy_matrix, q_from_v


def test_stationary_distribution_is_invariant():
    mdp = GridWorld().mdp()
    uniform = np.full((25, 5), 0.2)
    d = stationary_distribution(mdp, uniform)
    P_pi = np.einsum("sa,sat->st", policy_matrix(uniform, 5), mdp.P)
    assert np.allclose(d @ P_pi, d) and np.isclose(d.sum(), 1.0)


def test_one_hot_fixed_point_is_the_true_value():
    mdp = GridWorld().mdp()
    uniform = np.full((25, 5), 0.2)
    w = td_fixed_point(mdp, uniform, one_hot_features(25), gamma=0.9)
    assert np.allclose(w, evaluate_policy(mdp, uniform, gamma=0.9))


def test_linear_td_converges_to_the_td_fixed_point():
    world = GridWorld()
    mdp = world.mdp()
    uniform = np.full((25, 5), 0.2)
    phi = polynomial_features((5, 5), degree=2)
    assert phi.shape == (25, 6) and fourier_features((5, 5), order=2).shape == (25, 9)
    w_star = td_fixed_point(mdp, uniform, phi, gamma=0.9)
    env = TabularEnv(mdp, max_steps=10**9)
    w, _ = linear_td0(env, uniform, phi, steps=20_000, gamma=0.9,
                      alpha=lambda t: 0.1 / (1 + t / 5000), seed=0)  # fmt: skip
    # within ~10% of the fixed point's scale (w = 0 is 3–4 away): one noisy trajectory
    assert np.abs(phi @ w - phi @ w_star).max() < 0.6
    assert np.abs(phi @ w_star).max() < 10  # a real (biased) approximation, not the table


@pytest.mark.slow  # ~3 s alone, 10+ s on a loaded machine
def test_dqn_learns_q_star_on_a_small_grid():
    torch.set_num_threads(1)
    mdp = GridWorld(rows=2, cols=3, forbidden=((0, 1),), target=(1, 2), r_forbidden=-5).mdp()
    v_star, _ = value_iteration(mdp, gamma=0.8)
    q_star = q_from_v(mdp, v_star, 0.8)
    q, losses = dqn(TabularEnv(mdp, max_steps=1000), one_hot_features(6), steps=300,
                    gamma=0.8, hidden=32, lr=1e-2, updates=400, target_every=25, batch_size=32,
                    seed=0)  # fmt: skip
    assert np.allclose(evaluate_policy(mdp, q.argmax(1), 0.8), v_star, atol=1e-6)
    assert np.abs(q - q_star).max() < 0.5
    assert np.mean(losses[-50:]) < np.mean(losses[:50])
