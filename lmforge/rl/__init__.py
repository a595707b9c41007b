"""Classic reinforcement learning on finite MDPs, from the Bellman equation to Q-learning and
DQN (Zhao, *Mathematical Foundations of Reinforcement Learning*; Sutton & Barto), in NumPy
and PyTorch. gymnasium is never needed at runtime: `TabularMDP.from_gymnasium(env)` reads a
toy-text environment object's transition table.

    from lmforge.rl import TabularMDP, value_iteration, q_learning
    V, policy = value_iteration(TabularMDP.from_gymnasium(env), gamma=0.99)

| module | what |
|---|---|
| `mdp` | `TabularMDP` (P, R, done as [S, A, S] arrays; from a gymnasium env's table), `TabularEnv` sampling it |
| `gridworld` | Zhao's grid world: forbidden cells, target, boundary / forbidden / target rewards |
| `planning` | Bellman expectation (closed form, iterative), value / policy / truncated policy iteration |
| `monte_carlo` | MC basic, MC exploring starts, ε-greedy MC (first- and every-visit) |
| `stochastic_approximation` | incremental mean, Robbins–Monro, SGD vs BGD vs MBGD for mean estimation |
| `td` | TD(0) values, Sarsa, expected Sarsa, n-step Sarsa, Q-learning (on- and off-policy) |
| `approximation` | linear TD(0) with grid features and its fixed point; DQN with replay and a target network |
| `plots` | value tables and policies as arrows (text) and PNGs; learning curves |
| `solve` | `solve(env, method)`: one method on the grid world or a gymnasium toy-text env (``lmforge rl solve``) |
"""

from lmforge.rl.gridworld import GridWorld
from lmforge.rl.mdp import TabularEnv, TabularMDP
from lmforge.rl.planning import (
    evaluate_policy,
    evaluate_policy_iterative,
    policy_iteration,
    truncated_policy_iteration,
    value_iteration,
)
from lmforge.rl.td import expected_sarsa, n_step_sarsa, q_learning, sarsa, td0_values

__all__ = [
    "GridWorld",
    "TabularEnv",
    "TabularMDP",
    "evaluate_policy",
    "evaluate_policy_iterative",
    "expected_sarsa",
    "n_step_sarsa",
    "policy_iteration",
    "q_learning",
    "sarsa",
    "td0_values",
    "truncated_policy_iteration",
    "value_iteration",
]
