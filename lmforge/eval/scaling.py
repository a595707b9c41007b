"""DeepSeek LLM's scaling laws (DeepSeek-AI 2024, §3): power laws of the compute budget C
(FLOPs, `lmforge.eval.flops`) fitted by least squares in log-log space, and the plan they
give for a budget.

- hyperparameters (§3.1, eq. 1): B_opt = 0.2920 · C^0.3271 (batch, tokens),
  η_opt = 0.3118 · C^−0.1250, fitted on every (C, B, η) run whose loss is within
  ``tolerance`` (the paper: 0.25 %) of the best loss at its budget;
- model/data split (§3.2, eq. 4): M_opt = 0.1715 · C^0.5243, D_opt = 5.8316 · C^0.4757,
  from the loss-minimising M of each IsoFLOP profile (a parabola in log M
  through the best shape and its neighbours).

    fit = fit_scaling_laws(runs)            # runs: dicts of compute, batch, lr, loss, model_scale
    plan(1e21, fit)                         # {"batch_tokens": …, "lr": …, "model_scale": …, "tokens": …}
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.io import atomic_write_json, read_json

__all__ = [
    "PAPER_FIT",
    "PowerLaw",
    "ScalingFit",
    "fit_power_law",
    "fit_scaling_laws",
    "isoflop_optimum",
    "load_fit",
    "near_optimal",
    "plan",
    "save_fit",
]


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient · x^exponent."""

    coefficient: float
    exponent: float

    def __call__(self, x: float) -> float:
        return self.coefficient * float(x) ** self.exponent


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Least squares of log y = log k + a · log x (≥ 2 distinct positive x)."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.size < 2 or np.unique(xs).size < 2:
        raise ValueError(f"a power-law fit needs ≥ 2 distinct x values (got {xs.size} points)")
    if (xs <= 0).any() or (ys <= 0).any():
        raise ValueError("a power-law fit needs positive x and y")
    exponent, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    return PowerLaw(float(math.exp(intercept)), float(exponent))


@dataclass(frozen=True)
class ScalingFit:
    """The four laws of a plan (any may be None when not fitted)."""

    batch: PowerLaw | None
    lr: PowerLaw | None
    model_scale: PowerLaw | None
    tokens: PowerLaw | None


PAPER_FIT = ScalingFit(
    batch=PowerLaw(0.2920, 0.3271),
    lr=PowerLaw(0.3118, -0.1250),
    model_scale=PowerLaw(0.1715, 0.5243),
    tokens=PowerLaw(5.8316, 0.4757),
)


def by_compute(runs: Sequence[Mapping[str, Any]]) -> dict[float, list[Mapping[str, Any]]]:
    """``runs`` grouped by their ``compute``."""
    groups: dict[float, list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[float(run["compute"])].append(run)
    return dict(groups)


def near_optimal(runs: Sequence[Mapping[str, Any]], tolerance: float = 0.0025) -> list[Mapping]:
    """The runs whose ``loss`` is at most (1 + tolerance) × the lowest loss at their
    ``compute`` (DeepSeek LLM §3.1: "near-optimal", within 0.25 %)."""
    kept = []
    for group in by_compute(runs).values():
        best = min(float(r["loss"]) for r in group)
        kept.extend(r for r in group if float(r["loss"]) <= best * (1 + tolerance))
    return kept


def isoflop_optimum(model_scales: Sequence[float], losses: Sequence[float]) -> float:
    """The loss-minimising model scale of one IsoFLOP profile: the vertex of the parabola in
    log M through the best sampled scale and its neighbours on either side (the three
    nearest in log M at an end of the profile), clamped to those three. Fitting only the
    valley keeps far-off, badly under-trained shapes from pulling the vertex. The best
    sampled M when the parabola opens downwards or fewer than 3 scales were run."""
    order = np.argsort(np.asarray(model_scales, float))
    scales = np.asarray(model_scales, float)[order]
    loss = np.asarray(losses, float)[order]
    i, best = int(np.argmin(loss)), float(scales[np.argmin(loss)])
    if np.unique(np.log(scales)).size < 3:
        return best
    lo = min(max(i - 1, 0), len(scales) - 3)
    logm, valley = np.log(scales[lo : lo + 3]), loss[lo : lo + 3]
    if np.unique(logm).size < 3:
        return best
    a, b, _ = np.polyfit(logm, valley, 2)
    if a <= 0:
        return best
    return float(np.exp(np.clip(-b / (2 * a), logm.min(), logm.max())))


def fit_scaling_laws(
    hyper_runs: Sequence[Mapping[str, Any]] = (),
    split_runs: Sequence[Mapping[str, Any]] = (),
    tolerance: float = 0.0025,
) -> ScalingFit:
    """B_opt(C), η_opt(C) from the near-optimal ``hyper_runs`` (keys compute, batch, lr,
    loss) and M_opt(C), D_opt(C) = C / M_opt from the IsoFLOP optima of ``split_runs`` (keys
    compute, model_scale, loss). A law is None when its runs span fewer than 2 budgets."""
    batch = lr = model = tokens = None
    if len(by_compute(hyper_runs)) >= 2:
        good = near_optimal(hyper_runs, tolerance)
        compute = [float(r["compute"]) for r in good]
        batch = fit_power_law(compute, [float(r["batch"]) for r in good])
        lr = fit_power_law(compute, [float(r["lr"]) for r in good])
    groups = by_compute(split_runs)
    if len(groups) >= 2:
        budgets = sorted(groups)
        optima = [isoflop_optimum([float(r["model_scale"]) for r in groups[c]],
                                  [float(r["loss"]) for r in groups[c]]) for c in budgets]  # fmt: skip
        model = fit_power_law(budgets, optima)
        tokens = fit_power_law(budgets, [c / m for c, m in zip(budgets, optima)])
    return ScalingFit(batch, lr, model, tokens)


def plan(compute: float, fit: ScalingFit = PAPER_FIT) -> dict[str, float]:
    """The recommended batch size (tokens), learning rate, model scale M (non-embedding
    FLOPs/token) and training tokens D for ``compute`` FLOPs, from ``fit``'s laws."""
    if not compute > 0:
        raise ValueError(f"compute={compute} must be > 0 FLOPs")
    laws = {"batch_tokens": fit.batch, "lr": fit.lr, "model_scale": fit.model_scale,
            "tokens": fit.tokens}  # fmt: skip
    return {name: law(compute) for name, law in laws.items() if law is not None}


def save_fit(path: str | Path, fit: ScalingFit) -> None:
    """``fit`` as JSON: ``{"batch": {"coefficient", "exponent"} | null, …}``."""
    atomic_write_json(path, asdict(fit))


def load_fit(path: str | Path) -> ScalingFit:
    """A `ScalingFit` from `save_fit`'s JSON (errors name the file and field)."""
    data = read_json(path, "scaling fit")
    laws = {}
    for name in ("batch", "lr", "model_scale", "tokens"):
        value = data.get(name) if isinstance(data, dict) else None
        if value is None:
            laws[name] = None
            continue
        try:
            laws[name] = PowerLaw(float(value["coefficient"]), float(value["exponent"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: field {name!r} must be {{coefficient, exponent}} numbers ({exc})"
            ) from exc
    return ScalingFit(**laws)
