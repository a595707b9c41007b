"""`lmforge rl solve`: classic RL on the grid world or a gymnasium toy-text environment —
the value table and the policy as arrows, PNGs of values / policy / learning curves
(`lmforge.rl.solve.solve`); `lmforge rl sa`: SGD vs MBGD vs BGD on mean estimation
(`lmforge.rl.stochastic_approximation`).

    lmforge rl solve --env gridworld --method vi
    lmforge rl solve --env FrozenLake-v1 --method qlearning --episodes 2000 --out runs/rl
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.commands.common import CommandError, subparser


def add_parser(subparsers: Any) -> None:
    from lmforge.rl.solve import METHODS

    group = subparsers.add_parser("rl", help="classic RL: planning, Monte Carlo, TD, DQN")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = subparser(
        actions,
        "solve",
        "solve a tabular environment with one method; print values and the policy as arrows",
        "  lmforge rl solve --env gridworld --method vi\n"
        "  lmforge rl solve --env gridworld --method sarsa --episodes 300 --r-forbidden -10\n"
        "  lmforge rl solve --env FrozenLake-v1 --method qlearning --gamma 0.95 --out runs/rl\n"
        "  lmforge rl solve --env CliffWalking-v1 --method pi   # needs gymnasium",
    )
    p.add_argument("--env", default="gridworld", metavar="NAME",
                   help="gridworld (Zhao's 5×5 board) or a gymnasium toy-text id "
                        "(FrozenLake-v1, CliffWalking-v1); default: gridworld")  # fmt: skip
    p.add_argument("--method", default="vi", choices=METHODS, help="default: vi")
    p.add_argument("--gamma", type=float, default=0.9, help="discount (default: 0.9)")
    p.add_argument("--episodes", type=int, default=500, metavar="N",
                   help="episodes for the learning methods (default: 500)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="write values_policy.png, learning_curve.png, "
                                                "result.json here")  # fmt: skip
    p.add_argument("--r-boundary", type=float, default=-1.0, help="gridworld (default: -1)")
    p.add_argument("--r-forbidden", type=float, default=-1.0, help="gridworld (default: -1)")
    p.add_argument("--r-target", type=float, default=1.0, help="gridworld (default: 1)")
    p.set_defaults(run=run_solve, command="rl solve")
    sa = subparser(
        actions,
        "sa",
        "stochastic approximation: SGD vs MBGD vs BGD estimating a mean (a_k = 1/k), as a PNG",
        "  lmforge rl sa --out runs/rl-sa\n  lmforge rl sa --samples 400 --steps 200 --out runs/rl-sa",
    )
    sa.add_argument("--samples", type=int, default=400, metavar="N",
                    help="points drawn uniformly from [-30, 30]² (default: 400)")  # fmt: skip
    sa.add_argument("--steps", type=int, default=100, metavar="K", help="default: 100")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--out", default="runs/rl-sa", metavar="DIR", help="default: runs/rl-sa")
    sa.set_defaults(run=run_sa, command="rl sa")


def run_solve(args: argparse.Namespace) -> int:
    from lmforge.rl.gridworld import GridWorld
    from lmforge.rl.solve import solve

    if not 0.0 <= args.gamma < 1.0:
        raise CommandError(f"--gamma must be in [0, 1), not {args.gamma}")
    if args.episodes < 1:
        raise CommandError("--episodes must be ≥ 1")
    import torch

    world = GridWorld(r_boundary=args.r_boundary, r_forbidden=args.r_forbidden,
                      r_target=args.r_target)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the DQN is a tiny MLP: one thread avoids thread-pool overhead
    try:
        result = solve(args.env, args.method, gamma=args.gamma, episodes=args.episodes,
                       seed=args.seed, out=args.out, gridworld=world)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    print(result.text())
    for path in result.files:
        print(f"wrote {path}")
    return 0


def run_sa(args: argparse.Namespace) -> int:
    import numpy as np

    from lmforge.rl.stochastic_approximation import mean_estimation_gd, plot_mean_estimation

    if args.samples < 1 or args.steps < 1:
        raise CommandError("--samples and --steps must be ≥ 1")
    samples = np.random.default_rng(args.seed).uniform(-30, 30, size=(args.samples, 2))
    path = plot_mean_estimation(samples, f"{args.out}/mean_estimation.png", args.steps, args.seed)
    mean = samples.mean(0)
    for method, m in (("sgd", 1), ("mbgd", 5), ("mbgd", 50), ("bgd", 1)):
        w = mean_estimation_gd(samples, method, steps=args.steps, batch_size=m, seed=args.seed)
        label = f"{method} m={m}" if method == "mbgd" else method
        print(f"{label:>10}: ‖w_K − mean‖ = {np.linalg.norm(w[-1] - mean):.4f}")
    print(f"wrote {path}")
    return 0
