"""TD learning: convergence on small MDPs against closed forms, n-step Sarsa with n = 1 equal
to Sarsa, terminal transitions without bootstrap, Q-learning on gymnasium's FrozenLake."""

import gymnasium as gym
import numpy as np
import pytest

from lmforge.rl import (
    GridWorld,
    TabularEnv,
    TabularMDP,
    evaluate_policy,
    expected_sarsa,
    n_step_sarsa,
    q_learning,
    sarsa,
    td0_values,
    value_iteration,
)
from lmforge.rl.planning import q_from_v
from lmforge.rl.td import epsilon_greedy_probs


def small_world():
    return GridWorld(rows=3, cols=3, forbidden=((1, 1),), target=(2, 2), r_forbidden=-10)


def test_epsilon_greedy_probabilities():
    p = epsilon_greedy_probs(np.array([0.0, 2.0, 1.0, 2.0]), 0.2)
    assert np.allclose(p, [0.05, 0.45, 0.05, 0.45])


def test_td0_converges_to_the_closed_form_value():
    mdp = small_world().mdp()
    _, policy = value_iteration(mdp, gamma=0.9)
    env = TabularEnv(mdp, max_steps=30)
    v = td0_values(env, policy, episodes=600, gamma=0.9, alpha=0.1, seed=0)
    assert np.allclose(v, evaluate_policy(mdp, policy, gamma=0.9), atol=0.05)


def test_off_policy_q_learning_finds_q_star_from_a_uniform_behaviour():
    mdp = small_world().mdp()
    v_star, _ = value_iteration(mdp, gamma=0.9)
    env = TabularEnv(mdp, max_steps=200)
    uniform = np.full((9, 5), 0.2)
    q = q_learning(env, episodes=150, gamma=0.9, seed=0, alpha=0.2, behaviour=uniform)
    assert q.shape == (9, 5)
    assert np.abs(q - q_from_v(mdp, v_star, 0.9)).max() < 0.05


def test_on_policy_methods_reach_an_optimal_greedy_policy():
    """Without forbidden cells the ε-greedy optimum is greedy-optimal too (with them, Sarsa
    rightly learns the safer path of its exploring policy)."""
    mdp = GridWorld(rows=3, cols=3, forbidden=(), target=(2, 2)).mdp()
    v_star, _ = value_iteration(mdp, gamma=0.9)
    for learn in (sarsa, expected_sarsa, q_learning):
        env = TabularEnv(mdp, max_steps=50)
        returns = []
        q = learn(env, episodes=300, gamma=0.9, seed=1, alpha=0.2, epsilon=0.3, returns=returns)
        policy = q.argmax(1)
        assert np.allclose(evaluate_policy(mdp, policy, 0.9), v_star, atol=1e-6), learn.__name__
        assert len(returns) == 300


def test_n_step_sarsa_with_n_1_is_sarsa():
    mdp = small_world().mdp()
    a = sarsa(TabularEnv(mdp, max_steps=20), episodes=30, seed=3, alpha=0.3, epsilon=0.3)
    b = n_step_sarsa(TabularEnv(mdp, max_steps=20), n=1, episodes=30, seed=3, alpha=0.3,
                     epsilon=0.3)  # fmt: skip
    assert np.allclose(a, b, atol=1e-12)
    c = n_step_sarsa(TabularEnv(mdp, max_steps=20), n=4, episodes=30, seed=3, alpha=0.3,
                     epsilon=0.3)  # fmt: skip
    assert not np.allclose(a, c)


def chain_with_terminal():
    """From 0, action 0 pays 1 and terminates in 1; state 1 pays 10 forever if reached."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 1] = P[0, 1, 0] = P[1, :, 1] = 1.0
    R = np.zeros_like(P)
    R[0, 0, 1], R[1, :, 1] = 1.0, 10.0
    done = np.zeros_like(P)
    done[0, 0, 1] = 1.0
    return TabularMDP(P, R, done, np.array([1.0, 0.0]))


@pytest.mark.parametrize("learn", [sarsa, expected_sarsa, q_learning, n_step_sarsa])
def test_terminal_transitions_do_not_bootstrap(learn):
    env = TabularEnv(chain_with_terminal(), max_steps=5)
    q = learn(env, episodes=300, gamma=0.9, seed=0, alpha=0.5, epsilon=0.5)
    assert q[0, 0] == pytest.approx(1.0, abs=1e-6)  # not 1 + 0.9 · 100
    assert q[1].max() == 0.0  # never entered: terminal transitions end the episode


def test_q_learning_solves_deterministic_frozenlake_in_gymnasium():
    env = gym.make("FrozenLake-v1", is_slippery=False)
    q = q_learning(env, episodes=400, gamma=0.95, seed=0, alpha=0.5, epsilon=0.3)
    s, _ = env.reset(seed=0)
    for _ in range(20):
        s, r, terminated, truncated, _ = env.step(int(q[s].argmax()))
        if terminated or truncated:
            break
    assert r == 1.0
    mdp = TabularMDP.from_gymnasium(env)
    v_star, _ = value_iteration(mdp, gamma=0.95)
    assert q[0].max() == pytest.approx(v_star[0], abs=0.02)
