"""Stochastic approximation (Zhao, *Mathematical Foundations of RL*, ch. 6).

- the incremental mean w_{k+1} = w_k − (1/k)(w_k − x_k) (eq. 6.4), equal to the sample mean;
- Robbins–Monro: w_{k+1} = w_k − a_k g̃(w_k, η_k) finds the root of g(w) = E[g̃] from noisy
  observations when Σ a_k = ∞ and Σ a_k² < ∞ (Theorem 6.1), e.g. a_k = 1/k;
- mean estimation as minimising J(w) = E[‖w − X‖²/2] by gradient descent:
  BGD uses the whole sample's mean gradient, SGD one sample per step (w_{k+1} = w_k − α_k
  (w_k − x_k)), MBGD a mini-batch of m samples (§6.4).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmforge.io import atomic_path

__all__ = ["incremental_mean", "robbins_monro", "mean_estimation_gd", "plot_mean_estimation"]


def incremental_mean(samples: np.ndarray) -> np.ndarray:
    """w_k for k = 1..N: the running estimates of the incremental mean (w_N = sample mean)."""
    samples = np.asarray(samples, dtype=np.float64)
    w = np.zeros(samples.shape[1:])
    out = np.zeros_like(samples)
    for k, x in enumerate(samples, start=1):
        w = w - (w - x) / k
        out[k - 1] = w
    return out


def robbins_monro(
    noisy_g: Callable[[float, np.random.Generator], float],
    w0: float = 0.0,
    steps: int = 1000,
    step_size: Callable[[int], float] = lambda k: 1.0 / k,
    seed: int | None = 0,
) -> np.ndarray:
    """The iterates w_1..w_steps of w_{k+1} = w_k − a_k g̃(w_k), with g̃ = ``noisy_g(w, rng)``."""
    rng = np.random.default_rng(seed)
    w = float(w0)
    out = np.zeros(steps)
    for k in range(1, steps + 1):
        w = w - step_size(k) * noisy_g(w, rng)
        out[k - 1] = w
    return out


def mean_estimation_gd(
    samples: np.ndarray,
    method: str = "sgd",
    steps: int = 200,
    batch_size: int = 10,
    step_size: Callable[[int], float] = lambda k: 1.0 / k,
    w0: np.ndarray | float = 0.0,
    seed: int | None = 0,
) -> np.ndarray:
    """Iterates [steps, …] of gradient descent on J(w) = E‖w − X‖²/2 over ``samples``:
    ``bgd`` (all samples per step), ``sgd`` (one random sample), ``mbgd`` (``batch_size``
    random samples, with replacement)."""
    samples = np.asarray(samples, dtype=np.float64)
    rng = np.random.default_rng(seed)
    w = np.broadcast_to(np.asarray(w0, dtype=np.float64), samples.shape[1:]).copy()
    out = np.zeros((steps, *samples.shape[1:]))
    for k in range(1, steps + 1):
        if method == "bgd":
            batch = samples
        elif method == "sgd":
            batch = samples[rng.integers(len(samples), size=1)]
        elif method == "mbgd":
            batch = samples[rng.integers(len(samples), size=batch_size)]
        else:
            raise ValueError(f"method must be bgd, sgd or mbgd, not {method!r}")
        w = w - step_size(k) * (w - batch.mean(axis=0))
        out[k - 1] = w
    return out


def plot_mean_estimation(samples: np.ndarray, path: str | Path, steps: int = 100,
                         seed: int = 0) -> Path:  # fmt: skip
    """A PNG of ‖w_k − x̄‖ for SGD, MBGD (m = 5, 50) and BGD with a_k = 1/k, on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = np.asarray(samples).mean(axis=0)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, method, m in (("SGD", "sgd", 1), ("MBGD m=5", "mbgd", 5),
                             ("MBGD m=50", "mbgd", 50), ("BGD", "bgd", 1)):  # fmt: skip
        w = mean_estimation_gd(samples, method, steps=steps, batch_size=m, seed=seed)
        err = np.linalg.norm((w - mean).reshape(steps, -1), axis=1)
        ax.plot(np.arange(1, steps + 1), err, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("iteration k (a_k = 1/k)")
    ax.set_ylabel("‖w_k − mean‖")
    ax.set_title("mean estimation: SGD vs MBGD vs BGD")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
