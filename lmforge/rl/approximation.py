"""Value-function approximation (Zhao, *Mathematical Foundations of RL*, ch. 8).

- TD(0) with a linear approximator v̂(s, w) = φ(s)ᵀ w:
  w_{t+1} = w_t + α [r_{t+1} + γ φ(s_{t+1})ᵀ w_t − φ(s_t)ᵀ w_t] φ(s_t) (eq. 8.13), which
  converges to the TD fixed point Φᵀ D (I − γ P_π) Φ w = Φᵀ D r_π (D = the stationary
  distribution of π; eq. 8.35), computed exactly by `td_fixed_point`;
- grid features: one-hot, polynomial in the normalised (row, col), Fourier (§8.2.3);
- deep Q-learning (Mnih et al. 2015; Zhao §8.4): a Q-network trained on minibatches from a
  replay buffer of transitions collected by a behaviour policy, towards the target
  y = r + γ (1 − terminated) max_a q̂(s', a, w_T) of a target network copied every
  ``target_every`` updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.rl.mdp import TabularMDP, env_sizes, sample_index
from lmforge.rl.planning import policy_matrix

__all__ = [
    "one_hot_features",
    "polynomial_features",
    "fourier_features",
    "stationary_distribution",
    "td_fixed_point",
    "linear_td0",
    "dqn",
]


def one_hot_features(num_states: int) -> np.ndarray:
    """Φ = I [S, S]: the tabular case as a linear one."""
    return np.eye(num_states)


def grid_coordinates(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = shape
    r, c = np.divmod(np.arange(rows * cols), cols)
    return r / max(rows - 1, 1), c / max(cols - 1, 1)


def polynomial_features(shape: tuple[int, int], degree: int = 2) -> np.ndarray:
    """Φ [S, F]: all monomials x^i y^j with i + j ≤ degree of the normalised (row, col)."""
    x, y = grid_coordinates(shape)
    cols = [x**i * y**j for i in range(degree + 1) for j in range(degree + 1 - i)]
    return np.stack(cols, axis=1)


def fourier_features(shape: tuple[int, int], order: int = 2) -> np.ndarray:
    """Φ [S, (order+1)²]: cos(π (i x + j y)) for i, j ≤ order."""
    x, y = grid_coordinates(shape)
    cols = [np.cos(np.pi * (i * x + j * y)) for i in range(order + 1) for j in range(order + 1)]
    return np.stack(cols, axis=1)


def stationary_distribution(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """d_π with d_πᵀ P_π = d_πᵀ (the left eigenvector of eigenvalue 1, normalised)."""
    pi = policy_matrix(policy, mdp.num_actions)
    P_pi = np.einsum("sa,sat->st", pi, mdp.P)
    vals, vecs = np.linalg.eig(P_pi.T)
    d = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
    return d / d.sum()


def td_fixed_point(
    mdp: TabularMDP, policy: np.ndarray, features: np.ndarray, gamma: float = 0.9
) -> np.ndarray:
    """w* solving Φᵀ D (I − γ P_π) Φ w = Φᵀ D r_π, the limit of linear TD(0) (eq. 8.35)."""
    pi = policy_matrix(policy, mdp.num_actions)
    r_pi = (pi * mdp.expected_reward).sum(1)
    P_pi = np.einsum("sa,sat->st", pi, mdp.continuation)
    D = np.diag(stationary_distribution(mdp, policy))
    Phi = np.asarray(features, dtype=np.float64)
    A = Phi.T @ D @ (np.eye(len(r_pi)) - gamma * P_pi) @ Phi
    return np.linalg.lstsq(A, Phi.T @ D @ r_pi, rcond=None)[0]


def linear_td0(
    env: Any,
    policy: np.ndarray,
    features: np.ndarray,
    steps: int = 20_000,
    gamma: float = 0.9,
    alpha: float | Callable[[int], float] = 0.005,
    seed: int | None = 0,
) -> tuple[np.ndarray, list[float]]:
    """(w, ‖Φ w_t‖ history) from linear TD(0) along one long trajectory of ``policy``."""
    rng = np.random.default_rng(seed)
    S, A = env_sizes(env)
    pi = policy_matrix(policy, A)
    Phi = np.asarray(features, dtype=np.float64)
    w = np.zeros(Phi.shape[1])
    s, _ = env.reset(seed=seed)
    s = int(s)
    history: list[float] = []
    for t in range(1, steps + 1):
        a = int(sample_index(pi[s], rng))
        s2, r, terminated, truncated, _ = env.step(a)
        s2 = int(s2)
        target = r + (0.0 if terminated else gamma * Phi[s2] @ w)
        step = alpha(t) if callable(alpha) else alpha
        w = w + step * (target - Phi[s] @ w) * Phi[s]
        s = s2
        if terminated or truncated:
            s, _ = env.reset()
            s = int(s)
        if t % 100 == 0:
            history.append(float(np.linalg.norm(Phi @ w)))
    return w, history


def dqn(
    env: Any,
    features: np.ndarray,
    steps: int = 2000,
    gamma: float = 0.9,
    hidden: int = 64,
    lr: float = 1e-3,
    batch_size: int = 64,
    updates: int = 2000,
    target_every: int = 100,
    behaviour: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, list[float]]:
    """(q̂ [S, A] from the trained network, loss per update) by off-policy DQN: ``steps``
    transitions from ``behaviour`` (uniform) fill the replay buffer, then ``updates``
    minibatch steps of Adam on (y − q̂(s, a, w))² with the target network refreshed every
    ``target_every`` updates."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    S, A = env_sizes(env)
    pi = np.full((S, A), 1.0 / A) if behaviour is None else behaviour
    buffer = []
    s, _ = env.reset(seed=seed)
    for _ in range(steps):
        a = int(sample_index(pi[int(s)], rng))
        s2, r, terminated, truncated, _ = env.step(a)
        buffer.append((int(s), a, float(r), int(s2), float(terminated)))
        s = s2
        if terminated or truncated:
            s, _ = env.reset()
    s_b, a_b, r_b, s2_b, d_b = (torch.tensor(np.array(x)) for x in zip(*buffer, strict=True))
    phi = torch.tensor(np.asarray(features), dtype=torch.float32)
    net = nn.Sequential(nn.Linear(phi.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, A))
    target = nn.Sequential(nn.Linear(phi.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, A))
    target.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses: list[float] = []
    for u in range(updates):
        idx = torch.as_tensor(rng.integers(len(buffer), size=batch_size))
        with torch.no_grad():
            y = (
                r_b[idx].float()
                + gamma * (1 - d_b[idx].float()) * target(phi[s2_b[idx]]).max(1).values
            )
        q = net(phi[s_b[idx]]).gather(1, a_b[idx].view(-1, 1)).squeeze(1)
        loss = ((y - q) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (u + 1) % target_every == 0:
            target.load_state_dict(net.state_dict())
    with torch.no_grad():
        return net(phi).double().numpy(), losses
