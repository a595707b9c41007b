"""`solve`: one tabular method on one environment, with the text and figures that show it —
the entry point of ``lmforge rl solve``.

Environments: ``gridworld`` (Zhao's 5 × 5 board, `lmforge.rl.gridworld`) or any gymnasium
toy-text id (``FrozenLake-v1``, ``CliffWalking-v1``, …), made only when gymnasium is
installed. Methods: planning (``vi``, ``pi``, ``tpi``), Monte Carlo (``mc-basic``,
``mc-es``, ``mc-eps``), TD (``sarsa``, ``expected-sarsa``, ``nstep-sarsa``, ``qlearning``,
``qlearning-off``) and ``dqn``. Every run also solves the MDP exactly (value iteration), so
the learned greedy policy is scored by its true value ``max_s |v_π − v*|``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.io import atomic_write_json
from lmforge.rl.approximation import dqn, one_hot_features
from lmforge.rl.gridworld import GridWorld
from lmforge.rl.mdp import TabularEnv, TabularMDP
from lmforge.rl.monte_carlo import mc_basic, mc_epsilon_greedy, mc_exploring_starts
from lmforge.rl.planning import (
    evaluate_policy,
    greedy_policy,
    policy_iteration,
    truncated_policy_iteration,
    value_iteration,
)
from lmforge.rl.plots import (
    format_policy,
    format_values,
    plot_learning_curves,
    plot_values_and_policy,
)
from lmforge.rl.td import expected_sarsa, n_step_sarsa, q_learning, sarsa

__all__ = ["METHODS", "SolveResult", "make_environment", "solve", "success_rate"]

METHODS = ("vi", "pi", "tpi", "mc-basic", "mc-es", "mc-eps", "sarsa", "expected-sarsa",
           "nstep-sarsa", "qlearning", "qlearning-off", "dqn")  # fmt: skip
MODEL_FREE = {"mc-eps", "sarsa", "expected-sarsa", "nstep-sarsa", "qlearning", "qlearning-off"}


@dataclass
class SolveResult:
    """What a method found: values v [S] (the true value of its greedy policy), the policy
    [S], q [S, A] when learned, the optimum v*, learning curves, and the files written."""

    env: str
    method: str
    mdp: TabularMDP
    v: np.ndarray
    policy: np.ndarray
    v_star: np.ndarray
    q: np.ndarray | None = None
    curves: dict[str, list[float]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def value_error(self) -> float:
        """max_s |v_π − v*|: 0 for an optimal policy."""
        return float(np.abs(self.v - self.v_star).max())

    def text(self) -> str:
        absorbing = [s for s in range(self.mdp.num_states)  # terminal states (holes, goal)
                     if (self.mdp.P[s, :, s] == 1).all() and (self.mdp.done[s, :, s] == 1).all()]  # fmt: skip
        marks = {s: "■" for s in absorbing}
        return (f"{self.env} · {self.method} · max|v_π − v*| = {self.value_error:.4f}\n"
                f"values:\n{format_values(self.v, self.mdp.shape)}\n"
                f"policy:\n{format_policy(self.policy, self.mdp.action_names, self.mdp.shape, marks)}")  # fmt: skip


def make_environment(name: str, gridworld: GridWorld | None = None) -> tuple[TabularMDP, Any]:
    """(the MDP, an environment to sample from) for ``gridworld`` or a gymnasium id."""
    if name == "gridworld":
        mdp = (gridworld or GridWorld()).mdp()
        return mdp, TabularEnv(mdp, max_steps=100)
    try:
        import gymnasium
    except ImportError as e:
        raise ValueError(f"--env {name} needs gymnasium (pip install gymnasium); "
                         "--env gridworld needs nothing") from e  # fmt: skip
    try:
        env = gymnasium.make(name)
    except gymnasium.error.Error as e:
        raise ValueError(f"--env {name}: {e}") from e
    if not hasattr(env.unwrapped, "P"):
        raise ValueError(f"--env {name} has no transition table (a toy-text environment has)")
    return TabularMDP.from_gymnasium(env), env


def success_rate(env: Any, policy: np.ndarray, episodes: int = 200, seed: int = 0,
                 max_steps: int = 200) -> float:  # fmt: skip
    """The fraction of episodes of the greedy ``policy`` that end with a positive reward."""
    greedy = np.asarray(policy)
    greedy = greedy.argmax(1) if greedy.ndim == 2 else greedy
    wins = 0
    for i in range(episodes):
        s, _ = env.reset(seed=seed + i)
        for _ in range(max_steps):
            s, r, terminated, truncated, _ = env.step(int(greedy[int(s)]))
            if terminated or truncated:
                wins += int(r > 0)
                break
    return wins / episodes


def solve(
    env_name: str = "gridworld",
    method: str = "vi",
    gamma: float = 0.9,
    episodes: int = 500,
    seed: int = 0,
    out: str | Path | None = None,
    gridworld: GridWorld | None = None,
) -> SolveResult:
    """Run ``method`` on ``env_name``; with ``out``, write values_policy.png,
    learning_curve.png (learning methods) and result.json there."""
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    mdp, env = make_environment(env_name, gridworld)
    v_star, _ = value_iteration(mdp, gamma)
    q = None
    curves: dict[str, list[float]] = {}
    if method == "vi":
        _, policy = value_iteration(mdp, gamma)
    elif method == "pi":
        _, policy = policy_iteration(mdp, gamma)
    elif method == "tpi":
        _, policy, deltas = truncated_policy_iteration(mdp, gamma, eval_sweeps=5)
        curves["‖v_k − v_k−1‖∞"] = deltas
    elif method == "mc-basic":
        q, policy = mc_basic(mdp, gamma, iterations=20, episode_length=100, seed=seed)
    elif method == "mc-es":
        q, policy = mc_exploring_starts(mdp, gamma, episodes=episodes * 10, seed=seed)
    elif method == "dqn":
        q, losses = dqn(TabularEnv(mdp, max_steps=1000), one_hot_features(mdp.num_states),
                        steps=max(episodes * 10, 1000), gamma=gamma, seed=seed)  # fmt: skip
        policy = greedy_policy(q)
        curves["TD loss"] = losses
    else:
        returns: list[float] = []
        kw: dict[str, Any] = {"episodes": episodes, "gamma": gamma, "seed": seed,
                              "returns": returns}  # fmt: skip
        if method == "mc-eps":
            q, _ = mc_epsilon_greedy(env, epsilon=0.2, **kw)
        elif method == "sarsa":
            q = sarsa(env, **kw)
        elif method == "expected-sarsa":
            q = expected_sarsa(env, **kw)
        elif method == "nstep-sarsa":
            q = n_step_sarsa(env, n=3, **kw)
        elif method == "qlearning":
            q = q_learning(env, **kw)
        else:  # qlearning-off: a uniform behaviour policy
            S, A = mdp.num_states, mdp.num_actions
            q = q_learning(env, behaviour=np.full((S, A), 1.0 / A), **kw)
        policy = greedy_policy(q)
        curves["episode return"] = returns
    result = SolveResult(env_name, method, mdp, evaluate_policy(mdp, policy, gamma), policy,
                         v_star, q, curves)  # fmt: skip
    if out is not None:
        out = Path(out)
        result.files.append(plot_values_and_policy(
            result.v, policy, mdp.action_names, mdp.shape, out / "values_policy.png",
            f"{env_name} · {method} (v of the greedy policy)"))  # fmt: skip
        if curves:
            ylabel = next(iter(curves))
            result.files.append(plot_learning_curves(curves, out / "learning_curve.png", ylabel))
        atomic_write_json(out / "result.json", {
            "env": env_name, "method": method, "gamma": gamma, "episodes": episodes,
            "seed": seed, "value_error": result.value_error, "v": result.v.tolist(),
            "policy": np.asarray(policy).tolist()})  # fmt: skip
        result.files.append(out / "result.json")
    return result
