"""Finite MDPs as arrays, and a sampling environment over them.

A `TabularMDP` holds, for every state s, action a and next state s':

- ``P[s, a, s']`` = p(s' | s, a), the transition probabilities;
- ``R[s, a, s']`` = E[r | s, a, s'], the reward of that transition;
- ``done[s, a, s']`` = the probability that the transition ends the episode (a terminal
  transition does not bootstrap: its target is r, not r + γ v(s')).

From these, the model-based quantities of the Bellman equation (Zhao, *Mathematical
Foundations of RL*, ch. 2) are ``expected_reward`` r(s, a) = Σ_s' p(s'|s,a) R(s,a,s') and
``continuation`` c(s, a, s') = p(s'|s,a) (1 − done(s,a,s')), so that
q(s, a) = r(s, a) + γ Σ_s' c(s, a, s') v(s').

`TabularEnv` samples episodes from an MDP with the gymnasium API (``reset``/``step``), so the
model-free algorithms run on the grid world and on gymnasium toy-text environments alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TabularMDP", "TabularEnv", "DiscreteSpace", "env_sizes", "sample_index"]


@dataclass
class TabularMDP:
    """A finite MDP: ``P``, ``R``, ``done`` of shape [S, A, S]; ``initial`` [S] (start
    distribution); optional ``shape`` (rows, cols) of a grid and ``action_names``."""

    P: np.ndarray
    R: np.ndarray
    done: np.ndarray
    initial: np.ndarray
    shape: tuple[int, int] | None = None
    action_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.P = np.asarray(self.P, dtype=np.float64)
        self.R = np.asarray(self.R, dtype=np.float64)
        self.done = np.asarray(self.done, dtype=np.float64)
        self.initial = np.asarray(self.initial, dtype=np.float64)
        S, A, S2 = self.P.shape
        if S != S2 or self.R.shape != self.P.shape or self.done.shape != self.P.shape:
            raise ValueError(f"P, R, done must all be [S, A, S]; got {self.P.shape}, "
                             f"{self.R.shape}, {self.done.shape}")  # fmt: skip
        if not np.allclose(self.P.sum(-1), 1.0, atol=1e-8):
            bad = np.argwhere(~np.isclose(self.P.sum(-1), 1.0, atol=1e-8))[0]
            raise ValueError(f"P[s={bad[0]}, a={bad[1]}] sums to {self.P[tuple(bad)].sum()}, not 1")
        if self.initial.shape != (S,) or not np.isclose(self.initial.sum(), 1.0):
            raise ValueError(f"initial must be a distribution over {S} states")

    @property
    def num_states(self) -> int:
        return self.P.shape[0]

    @property
    def num_actions(self) -> int:
        return self.P.shape[1]

    @property
    def expected_reward(self) -> np.ndarray:
        """r(s, a) = Σ_s' p(s'|s,a) R(s,a,s'), shape [S, A]."""
        return (self.P * self.R).sum(-1)

    @property
    def continuation(self) -> np.ndarray:
        """c(s, a, s') = p(s'|s,a) (1 − done), shape [S, A, S]: the mass that bootstraps."""
        return self.P * (1.0 - self.done)

    @classmethod
    def from_gymnasium(cls, env: Any) -> TabularMDP:
        """The MDP of a gymnasium toy-text environment (FrozenLake, CliffWalking, Taxi) read
        from its transition table ``env.unwrapped.P[s][a] = [(p, s', r, terminated), …]``.
        Takes an environment object; gymnasium itself is never imported here."""
        u = env.unwrapped
        table = getattr(u, "P", None)
        if not isinstance(table, dict):
            raise ValueError(f"{type(u).__name__} has no transition table env.unwrapped.P")
        S = int(env.observation_space.n)
        A = int(env.action_space.n)
        P = np.zeros((S, A, S))
        reward_mass = np.zeros((S, A, S))
        done_mass = np.zeros((S, A, S))
        for s in range(S):
            for a in range(A):
                for prob, nxt, reward, terminated in table[s][a]:
                    P[s, a, int(nxt)] += prob
                    reward_mass[s, a, int(nxt)] += prob * reward
                    done_mass[s, a, int(nxt)] += prob * float(terminated)
        with np.errstate(invalid="ignore", divide="ignore"):
            R = np.where(P > 0, reward_mass / np.maximum(P, 1e-300), 0.0)
            done = np.where(P > 0, done_mass / np.maximum(P, 1e-300), 0.0)
        initial = np.asarray(getattr(u, "initial_state_distrib", np.eye(S)[0]), dtype=np.float64)
        shape = None
        if hasattr(u, "nrow") and hasattr(u, "ncol"):
            shape = (int(u.nrow), int(u.ncol))
        elif hasattr(u, "shape") and len(tuple(u.shape)) == 2:
            shape = tuple(int(x) for x in u.shape)  # type: ignore[assignment]
        names = ("left", "down", "right", "up") if A == 4 and hasattr(u, "desc") else ()
        if type(u).__name__ == "CliffWalkingEnv":
            names = ("up", "right", "down", "left")
        return cls(P, R, done, initial / initial.sum(), shape=shape, action_names=names)


@dataclass
class DiscreteSpace:
    """The little of ``gymnasium.spaces.Discrete`` the algorithms use: ``n``."""

    n: int


class TabularEnv:
    """Episodes sampled from a `TabularMDP` through the gymnasium API: ``reset(seed=…)`` →
    (state, info), ``step(a)`` → (state, reward, terminated, truncated, info). An episode is
    truncated after ``max_steps`` steps (continuing tasks such as the grid world need it)."""

    def __init__(self, mdp: TabularMDP, max_steps: int = 100, seed: int | None = None) -> None:
        self.mdp = mdp
        self.max_steps = max_steps
        self.observation_space = DiscreteSpace(mdp.num_states)
        self.action_space = DiscreteSpace(mdp.num_actions)
        self.rng = np.random.default_rng(seed)
        self.cdf = np.cumsum(mdp.P, axis=-1)
        self.state = 0
        self.steps = 0

    @property
    def unwrapped(self) -> TabularEnv:
        return self

    def reset(self, seed: int | None = None, start: int | None = None) -> tuple[int, dict]:
        """A new episode from the start distribution, or from ``start`` (exploring starts)."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        if start is None:
            start = sample_index(self.mdp.initial, self.rng)
        self.state, self.steps = int(start), 0
        return self.state, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        s, a = self.state, int(action)
        cdf = self.cdf[s, a]
        nxt = min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")),
                  len(cdf) - 1)  # fmt: skip
        while self.mdp.P[s, a, nxt] == 0:  # a draw that landed on a zero-width bin's edge
            nxt -= 1
        reward = float(self.mdp.R[s, a, nxt])
        d = self.mdp.done[s, a, nxt]
        terminated = bool(d >= 1.0 or (d > 0 and self.rng.random() < d))
        self.state, self.steps = nxt, self.steps + 1
        return nxt, reward, terminated, self.steps >= self.max_steps, {}


def env_sizes(env: Any) -> tuple[int, int]:
    """(number of states, number of actions) of a discrete environment."""
    return int(env.observation_space.n), int(env.action_space.n)


def sample_index(probs: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn from the distribution ``probs`` (faster than ``rng.choice(p=…)``)."""
    cdf = np.cumsum(probs)
    i = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)
    while probs[i] == 0:
        i -= 1
    return i
