"""lmforge/eval/scaling.py: fits recover known exponents from synthetic sweeps; the plan from
the paper's coefficients; fit files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmforge.eval.scaling import (
    PAPER_FIT,
    PowerLaw,
    fit_power_law,
    fit_scaling_laws,
    isoflop_optimum,
    load_fit,
    near_optimal,
    plan,
    save_fit,
)

BUDGETS = [1e15, 1e16, 1e17, 1e18]


def test_power_law_fit_recovers_coefficient_and_exponent_under_noise():
    rng = np.random.default_rng(0)
    x = np.logspace(10, 20, 40)
    y = 0.3 * x**0.33 * np.exp(rng.normal(0, 0.02, x.size))
    law = fit_power_law(x, y)
    assert law.exponent == pytest.approx(0.33, abs=0.005)
    assert law.coefficient == pytest.approx(0.3, rel=0.15)
    with pytest.raises(ValueError, match="2 distinct x"):
        fit_power_law([1.0, 1.0], [2.0, 3.0])


def synthetic_hyper_runs() -> list[dict]:
    """Loss is a bowl in (log B, log η) around B* = 0.29·C^0.33, η* = 0.31·C^−0.125."""
    runs = []
    for c in BUDGETS:
        b_star, lr_star = 0.29 * c**0.33, 0.31 * c**-0.125
        for fb in (0.25, 0.5, 1.0, 2.0, 4.0):
            for fl in (0.25, 0.5, 1.0, 2.0, 4.0):
                loss = 2.0 + 0.01 * math.log(fb) ** 2 + 0.01 * math.log(fl) ** 2
                runs.append(dict(compute=c, batch=b_star * fb, lr=lr_star * fl, loss=loss))
    return runs


def synthetic_split_runs() -> list[dict]:
    """IsoFLOP profiles: loss parabolic in log M around M* = 0.17·C^0.52."""
    runs = []
    for c in BUDGETS:
        m_star = 0.17 * c**0.52
        for f in (0.2, 0.5, 1.3, 3.0, 7.0):  # the optimum itself is not sampled
            runs.append(dict(compute=c, model_scale=m_star * f, loss=3.0 + 0.05 * math.log(f) ** 2))
    return runs


def test_fits_recover_the_exponents_of_synthetic_sweeps():
    fit = fit_scaling_laws(synthetic_hyper_runs(), synthetic_split_runs(), tolerance=0.0025)
    assert fit.batch.exponent == pytest.approx(0.33, abs=1e-9)
    assert fit.lr.exponent == pytest.approx(-0.125, abs=1e-9)
    assert fit.batch.coefficient == pytest.approx(0.29, rel=1e-6)
    assert fit.model_scale.exponent == pytest.approx(0.52, abs=1e-6)
    assert fit.tokens.exponent == pytest.approx(0.48, abs=1e-6)
    assert fit.model_scale(1e20) * fit.tokens(1e20) == pytest.approx(1e20, rel=1e-6)


def test_near_optimal_keeps_runs_within_the_tolerance_per_budget():
    runs = [dict(compute=1, loss=2.0), dict(compute=1, loss=2.004), dict(compute=1, loss=2.01),
            dict(compute=2, loss=1.5), dict(compute=2, loss=1.6)]  # fmt: skip
    kept = near_optimal(runs, tolerance=0.0025)
    assert [(r["compute"], r["loss"]) for r in kept] == [(1, 2.0), (1, 2.004), (2, 1.5)]


def test_isoflop_optimum_is_the_parabola_vertex():
    scales = [1e6, 1e7, 1e8]
    losses = [(math.log(s) - math.log(3e7)) ** 2 for s in scales]
    assert isoflop_optimum(scales, losses) == pytest.approx(3e7, rel=1e-9)
    assert isoflop_optimum([1e6, 1e7], [2.0, 1.0]) == 1e7  # too few points: best sampled


def test_isoflop_optimum_fits_the_valley_not_far_under_trained_shapes():
    scales = [1e5, 1e6, 1e7, 1e8, 1e9]
    losses = [(math.log(s) - math.log(3e6)) ** 2 for s in scales]
    losses[-1] = 50.0  # a shape far too large for the budget, loss off the parabola
    assert isoflop_optimum(list(reversed(scales)), list(reversed(losses))) == pytest.approx(3e6)
    edge = [(math.log(s) - math.log(3e4)) ** 2 for s in scales]  # minimum below the range
    assert isoflop_optimum(scales, edge) == pytest.approx(1e5)


def test_plan_uses_the_papers_coefficients_and_fit_files_round_trip(tmp_path):
    p = plan(1e21)
    assert p["batch_tokens"] == pytest.approx(0.2920 * 1e21**0.3271)
    assert p["lr"] == pytest.approx(0.3118 * 1e21**-0.125)
    assert p["model_scale"] * p["tokens"] == pytest.approx(1e21, rel=0.01)  # 0.1715·5.8316 ≈ 1
    save_fit(tmp_path / "fit.json", PAPER_FIT)
    assert load_fit(tmp_path / "fit.json") == PAPER_FIT
    (tmp_path / "bad.json").write_text(json.dumps({"batch": {"coefficient": 1}}))
    with pytest.raises(ValueError, match="field 'batch'"):
        load_fit(tmp_path / "bad.json")
    assert PowerLaw(2.0, 0.5)(16.0) == 8.0
    with pytest.raises(ValueError, match="compute=0"):
        plan(0)
