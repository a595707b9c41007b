"""Planning against closed forms: the Bellman equation by an independent loop, VI = PI =
truncated PI, and the terminal / continuing distinction."""

import gymnasium as gym
import numpy as np
import pytest

from lmforge.rl import (
    GridWorld,
    TabularMDP,
    evaluate_policy,
    evaluate_policy_iterative,
    policy_iteration,
    truncated_policy_iteration,
    value_iteration,
)
from lmforge.rl.planning import q_from_v


def bellman_by_loops(mdp, policy, gamma, sweeps=2000):
    """v(s) = Σ_a π(a|s) Σ_s' p(s'|s,a)[R + γ (1 − done) v(s')], iterated with plain loops."""
    v = [0.0] * mdp.num_states
    for _ in range(sweeps):
        new = []
        for s in range(mdp.num_states):
            a = int(policy[s])
            total = 0.0
            for s2 in range(mdp.num_states):
                p = mdp.P[s, a, s2]
                if p:
                    total += p * (mdp.R[s, a, s2] + gamma * (1 - mdp.done[s, a, s2]) * v[s2])
            new.append(total)
        v = new
    return np.array(v)


@pytest.mark.parametrize("env", ["gridworld", "FrozenLake-v1"])
def test_closed_form_evaluation_matches_the_bellman_equation(env):
    mdp = GridWorld().mdp() if env == "gridworld" else TabularMDP.from_gymnasium(gym.make(env))
    policy = np.random.default_rng(0).integers(mdp.num_actions, size=mdp.num_states)
    v = evaluate_policy(mdp, policy, gamma=0.9)
    assert np.allclose(v, bellman_by_loops(mdp, policy, 0.9, sweeps=300), atol=1e-9)
    assert np.allclose(v, evaluate_policy_iterative(mdp, policy, gamma=0.9), atol=1e-8)
    # v = r_π + γ P_π v holds exactly
    q = q_from_v(mdp, v, 0.9)
    assert np.allclose(v, q[np.arange(mdp.num_states), policy], atol=1e-10)


def test_stay_forever_in_the_target_is_one_over_one_minus_gamma():
    world = GridWorld()
    stay = np.full(25, world.action_names.index("stay"))
    v = evaluate_policy(world.mdp(), stay, gamma=0.9)
    assert v[world.state(3, 2)] == pytest.approx(10.0)
    assert v[world.state(1, 1)] == pytest.approx(-10.0)  # staying in a forbidden cell
    assert v[world.state(0, 0)] == 0.0


@pytest.mark.parametrize("env", ["gridworld", "FrozenLake-v1", "CliffWalking-v1"])
def test_value_iteration_policy_iteration_and_truncated_agree(env):
    mdp = GridWorld().mdp() if env == "gridworld" else TabularMDP.from_gymnasium(gym.make(env))
    gamma = 0.95
    v_vi, pi_vi = value_iteration(mdp, gamma=gamma)
    v_pi, pi_pi = policy_iteration(mdp, gamma=gamma)
    v_tpi, _, deltas = truncated_policy_iteration(mdp, gamma=gamma, eval_sweeps=3)
    assert v_vi.shape == pi_vi.shape == (mdp.num_states,)
    assert np.allclose(v_vi, v_pi, atol=1e-7) and np.allclose(v_vi, v_tpi, atol=1e-7)
    # both policies are optimal: their exact values are v*
    assert np.allclose(evaluate_policy(mdp, pi_vi, gamma), v_pi, atol=1e-7)
    assert np.allclose(evaluate_policy(mdp, pi_pi, gamma), v_pi, atol=1e-7)
    # Bellman optimality: v* = max_a q*(s, a)
    assert np.allclose(q_from_v(mdp, v_vi, gamma).max(1), v_vi, atol=1e-8)
    assert deltas[-1] < 1e-9


def test_terminal_transitions_do_not_bootstrap():
    """A two-state chain: from 0, 'go' pays 1 and ends in state 1 (worth 100 if it
    bootstrapped); 'wait' pays 0 and stays. v*(0) = 1, not 1 + γ·v(1)."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 1] = P[0, 1, 0] = P[1, :, 1] = 1.0
    R = np.zeros_like(P)
    R[0, 0, 1] = 1.0
    R[1, :, 1] = 10.0  # state 1 pays 10 forever: v(1) = 100 at γ = 0.9
    done = np.zeros_like(P)
    done[0, 0, 1] = 1.0
    mdp = TabularMDP(P, R, done, np.array([1.0, 0.0]))
    v, policy = value_iteration(mdp, gamma=0.9)
    assert v[1] == pytest.approx(100.0) and v[0] == pytest.approx(1.0) and policy[0] == 0
