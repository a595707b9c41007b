"""Temporal-difference learning on discrete environments with the gymnasium API (Zhao,
*Mathematical Foundations of RL*, ch. 7; Sutton & Barto 2018, ch. 6–7).

- TD(0) state values: v(s_t) ← v(s_t) − α [v(s_t) − (r_{t+1} + γ v(s_{t+1}))] (eq. 7.1);
- Sarsa: q(s,a) ← q(s,a) − α [q(s,a) − (r + γ q(s',a'))] with a' ~ ε-greedy (eq. 7.12);
- expected Sarsa: the target r + γ Σ_a' π(a'|s') q(s',a') (eq. 7.20);
- n-step Sarsa: the target Σ_{i<n} γ^i r_{t+i+1} + γ^n q(s_{t+n}, a_{t+n}) (eq. 7.22);
- Q-learning: the target r + γ max_a' q(s',a') (eq. 7.23), on-policy (ε-greedy in q) or
  off-policy (actions from a fixed behaviour policy π_b, e.g. uniform).

A terminal transition (``terminated``) does not bootstrap: its target is r. A truncated
one (a time limit) does. Each function takes an optional ``returns`` list that receives the
undiscounted return of every episode (the learning curve).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmforge.rl.mdp import env_sizes, sample_index

__all__ = [
    "epsilon_greedy_probs",
    "epsilon_greedy_action",
    "td0_values",
    "sarsa",
    "expected_sarsa",
    "n_step_sarsa",
    "q_learning",
]


def epsilon_greedy_probs(q_row: np.ndarray, epsilon: float) -> np.ndarray:
    """π(a|s) = 1 − ε(|A|−1)/|A| on the greedy action, ε/|A| elsewhere (ties share the
    greedy mass equally)."""
    n = len(q_row)
    best = q_row >= q_row.max() - 1e-12
    probs = np.full(n, epsilon / n)
    probs[best] += (1.0 - epsilon) / best.sum()
    return probs


def epsilon_greedy_action(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """An action drawn from `epsilon_greedy_probs`: uniform with probability ε, else a
    uniformly chosen greedy one."""
    if epsilon > 0 and rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row >= q_row.max() - 1e-12)
    return int(best[0] if len(best) == 1 else best[rng.integers(len(best))])


def start(env: Any, episode: int, seed: int | None) -> int:
    """Reset ``env``; the first episode seeds it."""
    state, _ = env.reset(seed=seed) if episode == 0 and seed is not None else env.reset()
    return int(state)


def td0_values(
    env: Any,
    policy: np.ndarray,
    episodes: int = 500,
    gamma: float = 0.9,
    alpha: float = 0.1,
    seed: int | None = 0,
    max_steps: int = 1000,
    returns: list[float] | None = None,
) -> np.ndarray:
    """v_π [S] estimated by TD(0) while following ``policy`` ([S] or [S, A])."""
    S, A = env_sizes(env)
    rng = np.random.default_rng(seed)
    pi = np.asarray(policy)
    pi = np.eye(A)[pi.astype(int)] if pi.ndim == 1 else pi
    v = np.zeros(S)
    for episode in range(episodes):
        s, total = start(env, episode, seed), 0.0
        for _ in range(max_steps):
            a = int(sample_index(pi[s], rng))
            s2, r, terminated, truncated, _ = env.step(a)
            target = r + (0.0 if terminated else gamma * v[s2])
            v[s] -= alpha * (v[s] - target)
            s, total = int(s2), total + r
            if terminated or truncated:
                break
        if returns is not None:
            returns.append(total)
    return v


def sarsa(
    env: Any,
    episodes: int = 500,
    gamma: float = 0.9,
    seed: int | None = 0,
    alpha: float = 0.1,
    epsilon: float = 0.1,
    max_steps: int = 1000,
    expected: bool = False,
    returns: list[float] | None = None,
) -> np.ndarray:
    """q [S, A] by Sarsa (or expected Sarsa with ``expected=True``), ε-greedy in q."""
    S, A = env_sizes(env)
    rng = np.random.default_rng(seed)
    q = np.zeros((S, A))
    for episode in range(episodes):
        s, total = start(env, episode, seed), 0.0
        a = epsilon_greedy_action(q[s], epsilon, rng)
        for _ in range(max_steps):
            s2, r, terminated, truncated, _ = env.step(a)
            s2 = int(s2)
            a2 = epsilon_greedy_action(q[s2], epsilon, rng)
            if terminated:
                target = r
            elif expected:
                target = r + gamma * epsilon_greedy_probs(q[s2], epsilon) @ q[s2]
            else:
                target = r + gamma * q[s2, a2]
            q[s, a] -= alpha * (q[s, a] - target)
            s, a, total = s2, a2, total + r
            if terminated or truncated:
                break
        if returns is not None:
            returns.append(total)
    return q


def expected_sarsa(env: Any, episodes: int = 500, gamma: float = 0.9, seed: int | None = 0,
                   **kw: Any) -> np.ndarray:  # fmt: skip
    """q [S, A] by expected Sarsa (`sarsa` with ``expected=True``)."""
    return sarsa(env, episodes=episodes, gamma=gamma, seed=seed, expected=True, **kw)


def n_step_sarsa(
    env: Any,
    n: int = 3,
    episodes: int = 500,
    gamma: float = 0.9,
    seed: int | None = 0,
    alpha: float = 0.1,
    epsilon: float = 0.1,
    max_steps: int = 1000,
    returns: list[float] | None = None,
) -> np.ndarray:
    """q [S, A] by n-step Sarsa (Sutton & Barto, §7.2): the update of (s_τ, a_τ) waits for
    n rewards, or for the episode's end (then it uses the remaining rewards only)."""
    S, A = env_sizes(env)
    rng = np.random.default_rng(seed)
    q = np.zeros((S, A))
    for episode in range(episodes):
        s = start(env, episode, seed)
        states, actions, rewards = [s], [epsilon_greedy_action(q[s], epsilon, rng)], [0.0]
        T, t, terminal_end = np.inf, 0, False
        while True:
            if t < T:
                s2, r, terminated, truncated, _ = env.step(actions[t])
                states.append(int(s2))
                rewards.append(float(r))
                if terminated or truncated or t + 1 >= max_steps:
                    T, terminal_end = t + 1, bool(terminated)
                actions.append(epsilon_greedy_action(q[int(s2)], epsilon, rng))
            tau = t - n + 1
            if tau >= 0:
                end = int(min(tau + n, T))
                g = sum(gamma ** (i - tau - 1) * rewards[i] for i in range(tau + 1, end + 1))
                if tau + n < T or (tau + n >= T and not terminal_end):
                    g += gamma ** (end - tau) * q[states[end], actions[end]]
                q[states[tau], actions[tau]] -= alpha * (q[states[tau], actions[tau]] - g)
            if tau == T - 1:
                break
            t += 1
        if returns is not None:
            returns.append(float(sum(rewards)))
    return q


def q_learning(
    env: Any,
    episodes: int = 500,
    gamma: float = 0.9,
    seed: int | None = 0,
    alpha: float = 0.1,
    epsilon: float = 0.1,
    max_steps: int = 1000,
    behaviour: np.ndarray | None = None,
    returns: list[float] | None = None,
) -> np.ndarray:
    """q [S, A] by Q-learning: on-policy (ε-greedy in q) or, with ``behaviour`` [S, A],
    off-policy (actions drawn from that fixed policy; the target is still greedy)."""
    S, A = env_sizes(env)
    rng = np.random.default_rng(seed)
    q = np.zeros((S, A))
    for episode in range(episodes):
        s, total = start(env, episode, seed), 0.0
        for _ in range(max_steps):
            if behaviour is None:
                a = epsilon_greedy_action(q[s], epsilon, rng)
            else:
                a = int(sample_index(behaviour[s], rng))
            s2, r, terminated, truncated, _ = env.step(a)
            s2 = int(s2)
            target = r if terminated else r + gamma * q[s2].max()
            q[s, a] -= alpha * (q[s, a] - target)
            s, total = s2, total + r
            if terminated or truncated:
                break
        if returns is not None:
            returns.append(total)
    return q
