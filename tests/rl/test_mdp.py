"""`TabularMDP.from_gymnasium` against gymnasium's own tables and dynamics; `TabularEnv`
sampling frequencies against P."""

import gymnasium as gym
import numpy as np
import pytest

from lmforge.rl import TabularEnv, TabularMDP, evaluate_policy, value_iteration
from lmforge.rl.mdp import sample_index


@pytest.mark.parametrize("name", ["FrozenLake-v1", "CliffWalking-v1"])
def test_from_gymnasium_reads_the_transition_table(name):
    env = gym.make(name)
    mdp = TabularMDP.from_gymnasium(env)
    table = env.unwrapped.P
    for s in range(mdp.num_states):
        for a in range(mdp.num_actions):
            p = np.zeros(mdp.num_states)
            r = np.zeros(mdp.num_states)
            for prob, nxt, reward, _ in table[s][a]:
                p[nxt] += prob
                r[nxt] = reward
            assert np.allclose(mdp.P[s, a], p)
            assert np.allclose(mdp.R[s, a][p > 0], r[p > 0])
    assert np.allclose(mdp.initial, env.unwrapped.initial_state_distrib)
    assert mdp.shape == ((4, 4) if name.startswith("Frozen") else (4, 12))


def test_frozenlake_optimal_value_matches_gymnasium_rollouts():
    """v*(start) with γ = 1 is the success probability of π*; gymnasium's own dynamics
    (no time limit) agree within sampling error."""
    env = gym.make("FrozenLake-v1", max_episode_steps=10_000)
    mdp = TabularMDP.from_gymnasium(env)
    _, policy = value_iteration(mdp, gamma=0.999)
    v = evaluate_policy(mdp, policy, gamma=1.0 - 1e-9)
    assert v[0] == pytest.approx(0.8235, abs=0.002)  # 4×4 slippery, no time limit: 14/17
    wins, episodes = 0, 1000
    for i in range(episodes):
        s, _ = env.reset(seed=i)
        while True:
            s, r, terminated, truncated, _ = env.step(int(policy[s]))
            if terminated or truncated:
                wins += r > 0
                break
    assert wins / episodes == pytest.approx(v[0], abs=0.04)  # ~3σ


def test_tabular_env_samples_p_and_terminates():
    env = gym.make("FrozenLake-v1")
    mdp = TabularMDP.from_gymnasium(env)
    sampler = TabularEnv(mdp, seed=0)
    counts = np.zeros(mdp.num_states)
    for _ in range(3000):
        sampler.reset(start=6)
        s, _, terminated, _, _ = sampler.step(1)  # down from 6: to 5 (hole), 10 or 7 (hole)
        counts[s] += 1
        assert terminated == (s in (5, 7))
    assert np.allclose(counts / counts.sum(), mdp.P[6, 1], atol=0.03)
    rng = np.random.default_rng(0)
    draws = [sample_index(np.array([0.0, 0.25, 0.0, 0.75]), rng) for _ in range(4000)]
    assert set(draws) == {1, 3} and np.mean(np.array(draws) == 3) == pytest.approx(0.75, abs=0.03)


def test_bad_tables_are_refused():
    P = np.zeros((2, 1, 2))
    P[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match=r"P\[s=1, a=0\] sums to 0"):
        TabularMDP(P, np.zeros_like(P), np.zeros_like(P), np.array([1.0, 0.0]))
