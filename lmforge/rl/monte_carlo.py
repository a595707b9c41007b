"""Monte Carlo control (Zhao, *Mathematical Foundations of RL*, ch. 5): action values
estimated as averages of sampled returns instead of from the model.

- MC basic (Algorithm 5.1): policy iteration whose evaluation step estimates every
  q_π(s, a) from episodes that start at (s, a);
- MC exploring starts (Algorithm 5.2): one episode per iteration from a random (s, a),
  returns credited backwards (first-visit or every-visit), greedy improvement per state;
- MC ε-greedy (Algorithm 5.3): no exploring starts — episodes from the environment's start,
  an ε-greedy policy improved after each episode.

Returns are g_t = r_{t+1} + γ g_{t+1}, computed backwards over an episode of at most
``episode_length`` steps (the grid world is continuing: a long episode approximates the
infinite return to within γ^length).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmforge.rl.mdp import TabularEnv, TabularMDP, env_sizes
from lmforge.rl.planning import greedy_policy
from lmforge.rl.td import epsilon_greedy_action, epsilon_greedy_probs

__all__ = ["rollout", "discounted_returns", "mc_basic", "mc_exploring_starts",
           "mc_epsilon_greedy"]  # fmt: skip


def rollout(
    env: Any,
    first_action: int | None,
    policy_fn: Any,
    length: int,
) -> list[tuple[int, int, float]]:
    """(s_t, a_t, r_{t+1}) for one episode from the env's current state: ``first_action``
    (or the policy) at t = 0, then ``policy_fn(s)``; stops at termination or ``length``."""
    s = int(env.unwrapped.state) if hasattr(env.unwrapped, "state") else None
    if s is None:
        s = int(env.unwrapped.s)
    steps = []
    a = policy_fn(s) if first_action is None else int(first_action)
    for _ in range(length):
        s2, r, terminated, truncated, _ = env.step(a)
        steps.append((s, a, float(r)))
        if terminated or truncated:
            break
        s = int(s2)
        a = policy_fn(s)
    return steps


def discounted_returns(rewards: list[float], gamma: float) -> np.ndarray:
    """g_t = Σ_k γ^k r_{t+k+1} for every t (computed backwards)."""
    g = np.zeros(len(rewards))
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = rewards[t] + gamma * acc
        g[t] = acc
    return g


def mc_basic(
    mdp: TabularMDP,
    gamma: float = 0.9,
    iterations: int = 10,
    episode_length: int = 100,
    episodes_per_pair: int = 1,
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(q [S, A], greedy π [S]) after ``iterations`` rounds of MC-basic policy iteration."""
    env = TabularEnv(mdp, max_steps=episode_length + 1, seed=seed)
    policy = np.zeros(mdp.num_states, dtype=int)
    q = np.zeros((mdp.num_states, mdp.num_actions))
    for _ in range(iterations):
        for s in range(mdp.num_states):
            for a in range(mdp.num_actions):
                total = 0.0
                for _ in range(episodes_per_pair):
                    env.reset(start=s)
                    steps = rollout(env, a, lambda x, p=policy: int(p[x]), episode_length)
                    total += discounted_returns([r for _, _, r in steps], gamma)[0]
                q[s, a] = total / episodes_per_pair
        new = greedy_policy(q)
        if np.array_equal(new, policy):
            break
        policy = new
    return q, policy


def credit_episode(
    q: np.ndarray,
    counts: np.ndarray,
    steps: list[tuple[int, int, float]],
    gamma: float,
    first_visit: bool,
) -> None:
    """Average the episode's returns into q (incremental mean per (s, a))."""
    g = discounted_returns([r for _, _, r in steps], gamma)
    seen: set[tuple[int, int]] = set()
    first = {}
    for t, (s, a, _) in enumerate(steps):
        if (s, a) not in seen:
            seen.add((s, a))
            first[(s, a)] = t
    for t, (s, a, _) in enumerate(steps):
        if first_visit and first[(s, a)] != t:
            continue
        counts[s, a] += 1
        q[s, a] += (g[t] - q[s, a]) / counts[s, a]


def mc_exploring_starts(
    mdp: TabularMDP,
    gamma: float = 0.9,
    episodes: int = 2000,
    episode_length: int = 50,
    first_visit: bool = True,
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(q, greedy π) by MC with exploring starts: each episode starts at a uniformly random
    (s, a), then follows the current greedy policy."""
    rng = np.random.default_rng(seed)
    env = TabularEnv(mdp, max_steps=episode_length + 1, seed=seed)
    S, A = mdp.num_states, mdp.num_actions
    q, counts = np.zeros((S, A)), np.zeros((S, A))
    policy = np.zeros(S, dtype=int)
    for _ in range(episodes):
        s0, a0 = int(rng.integers(S)), int(rng.integers(A))
        env.reset(start=s0)
        steps = rollout(env, a0, lambda x, p=policy: int(p[x]), episode_length)
        credit_episode(q, counts, steps, gamma, first_visit)
        policy = greedy_policy(q)
    return q, policy


def mc_epsilon_greedy(
    env: Any,
    gamma: float = 0.9,
    episodes: int = 500,
    epsilon: float = 0.1,
    episode_length: int = 200,
    first_visit: bool = False,
    seed: int | None = 0,
    returns: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(q, ε-greedy π [S, A]) by on-policy ε-greedy MC control from the env's start states."""
    rng = np.random.default_rng(seed)
    S, A = env_sizes(env)
    q, counts = np.zeros((S, A)), np.zeros((S, A))
    for episode in range(episodes):
        env.reset(seed=seed) if episode == 0 and seed is not None else env.reset()
        steps = rollout(env, None, lambda x: epsilon_greedy_action(q[x], epsilon, rng),
                        episode_length)  # fmt: skip
        credit_episode(q, counts, steps, gamma, first_visit)
        if returns is not None:
            returns.append(float(sum(r for _, _, r in steps)))
    policy = np.stack([epsilon_greedy_probs(q[s], epsilon) for s in range(S)])
    return q, policy
