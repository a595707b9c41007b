"""Model-based planning on a `TabularMDP` (Zhao, *Mathematical Foundations of RL*, ch. 2–4).

- the Bellman expectation equation v_π = r_π + γ P_π v_π, solved in closed form
  v_π = (I − γ P_π)⁻¹ r_π (eq. 2.x) or iteratively v_{k+1} = r_π + γ P_π v_k;
- value iteration v_{k+1} = max_π (r_π + γ P_π v_k) (Bellman optimality, ch. 4.1);
- policy iteration: exact evaluation, then greedy improvement, until stable (ch. 4.2);
- truncated policy iteration: j evaluation sweeps per improvement (ch. 4.3) — j = 1 is value
  iteration, j = ∞ policy iteration.

Policies are deterministic arrays [S] of action indices, or stochastic arrays [S, A].
"""

from __future__ import annotations

import numpy as np

from lmforge.rl.mdp import TabularMDP

__all__ = [
    "policy_matrix",
    "q_from_v",
    "greedy_policy",
    "evaluate_policy",
    "evaluate_policy_iterative",
    "value_iteration",
    "policy_iteration",
    "truncated_policy_iteration",
]


def policy_matrix(policy: np.ndarray, num_actions: int) -> np.ndarray:
    """π(a|s) as [S, A] from a deterministic policy [S] (or a stochastic one, returned as is)."""
    policy = np.asarray(policy)
    if policy.ndim == 2:
        return policy.astype(np.float64)
    return np.eye(num_actions)[policy.astype(int)]


def q_from_v(mdp: TabularMDP, v: np.ndarray, gamma: float) -> np.ndarray:
    """q(s, a) = r(s, a) + γ Σ_s' c(s, a, s') v(s'), shape [S, A]."""
    return mdp.expected_reward + gamma * mdp.continuation @ v


def greedy_policy(q: np.ndarray, atol: float = 1e-10) -> np.ndarray:
    """argmax_a q(s, a) per state; ties go to the lowest action index."""
    best = q.max(axis=1, keepdims=True)
    return np.argmax(q >= best - atol, axis=1)


def evaluate_policy(mdp: TabularMDP, policy: np.ndarray, gamma: float = 0.9) -> np.ndarray:
    """v_π = (I − γ P_π)⁻¹ r_π with r_π(s) = Σ_a π(a|s) r(s,a) and
    P_π(s, s') = Σ_a π(a|s) c(s, a, s'), solved as a linear system."""
    pi = policy_matrix(policy, mdp.num_actions)
    r_pi = (pi * mdp.expected_reward).sum(1)
    P_pi = np.einsum("sa,sat->st", pi, mdp.continuation)
    return np.linalg.solve(np.eye(mdp.num_states) - gamma * P_pi, r_pi)


def evaluate_policy_iterative(
    mdp: TabularMDP,
    policy: np.ndarray,
    gamma: float = 0.9,
    v0: np.ndarray | None = None,
    sweeps: int | None = None,
    tol: float = 1e-10,
) -> np.ndarray:
    """v_{k+1} = r_π + γ P_π v_k from ``v0`` (zeros), for ``sweeps`` sweeps or until the
    change is below ``tol`` (converges for γ < 1: a contraction in the max norm)."""
    pi = policy_matrix(policy, mdp.num_actions)
    r_pi = (pi * mdp.expected_reward).sum(1)
    P_pi = np.einsum("sa,sat->st", pi, mdp.continuation)
    v = np.zeros(mdp.num_states) if v0 is None else np.array(v0, dtype=np.float64)
    k = 0
    while sweeps is None or k < sweeps:
        new = r_pi + gamma * P_pi @ v
        k += 1
        delta = np.abs(new - v).max()
        v = new
        if sweeps is None and delta < tol:
            break
    return v


def value_iteration(
    mdp: TabularMDP, gamma: float = 0.9, tol: float = 1e-10, max_iters: int = 100_000
) -> tuple[np.ndarray, np.ndarray]:
    """v_{k+1}(s) = max_a q_k(s, a) until ‖v_{k+1} − v_k‖_∞ < tol; returns (v*, greedy π*)."""
    v = np.zeros(mdp.num_states)
    for _ in range(max_iters):
        new = q_from_v(mdp, v, gamma).max(axis=1)
        if np.abs(new - v).max() < tol:
            v = new
            break
        v = new
    return v, greedy_policy(q_from_v(mdp, v, gamma))


def policy_iteration(
    mdp: TabularMDP, gamma: float = 0.9, max_iters: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """π_{k+1} = greedy(q_{π_k}) with v_{π_k} in closed form, until the policy is stable."""
    policy = np.zeros(mdp.num_states, dtype=int)
    for _ in range(max_iters):
        v = evaluate_policy(mdp, policy, gamma)
        q = q_from_v(mdp, v, gamma)
        new = greedy_policy(q)
        # keep the current action where it is already greedy (no flip-flopping between ties)
        keep = q[np.arange(len(policy)), policy] >= q.max(1) - 1e-10
        new = np.where(keep, policy, new)
        if np.array_equal(new, policy):
            break
        policy = new
    return evaluate_policy(mdp, policy, gamma), policy


def truncated_policy_iteration(
    mdp: TabularMDP,
    gamma: float = 0.9,
    eval_sweeps: int = 5,
    tol: float = 1e-10,
    max_iters: int = 100_000,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Policy iteration with ``eval_sweeps`` iterative evaluation sweeps per step, starting
    each evaluation from the previous values; returns (v, π, ‖v_k − v_{k−1}‖_∞ per step)."""
    v = np.zeros(mdp.num_states)
    deltas: list[float] = []
    for _ in range(max_iters):
        policy = greedy_policy(q_from_v(mdp, v, gamma))
        new = evaluate_policy_iterative(mdp, policy, gamma, v0=v, sweeps=eval_sweeps)
        deltas.append(float(np.abs(new - v).max()))
        v = new
        if deltas[-1] < tol:
            break
    return v, greedy_policy(q_from_v(mdp, v, gamma)), deltas
