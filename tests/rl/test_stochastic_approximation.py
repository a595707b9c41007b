"""Stochastic approximation: the incremental mean is the sample mean, Robbins–Monro finds a
root from noisy observations, BGD/SGD/MBGD on mean estimation behave as the theory says."""

import numpy as np
import pytest

from lmforge.rl.stochastic_approximation import (
    incremental_mean,
    mean_estimation_gd,
    plot_mean_estimation,
    robbins_monro,
)


def test_incremental_mean_equals_the_running_sample_mean():
    x = np.random.default_rng(0).normal(size=(50, 2))
    w = incremental_mean(x)
    assert np.allclose(w, np.cumsum(x, axis=0) / np.arange(1, 51)[:, None])


def test_robbins_monro_finds_the_root_of_a_noisy_function():
    """g(w) = tanh(w − 1) observed with N(0, 1) noise: the root is w* = 1."""
    w = robbins_monro(lambda w, rng: np.tanh(w - 1) + rng.normal(), w0=3.0, steps=5000)
    assert w[-1] == pytest.approx(1.0, abs=0.15)


def test_gradient_descent_for_mean_estimation():
    x = np.random.default_rng(1).uniform(-10, 10, size=(400, 2))
    mean = x.mean(0)
    bgd = mean_estimation_gd(x, "bgd", steps=3)
    assert np.allclose(bgd[0], mean)  # a_1 = 1: one full-batch step lands on the mean
    sgd = mean_estimation_gd(x, "sgd", steps=400)
    # SGD with a_k = 1/k is the incremental mean of the samples it drew: near, not on, x̄
    assert 0 < np.linalg.norm(sgd[-1] - mean) < 1.0
    mbgd = mean_estimation_gd(x, "mbgd", steps=400, batch_size=50)
    assert np.linalg.norm(mbgd[-1] - mean) < np.linalg.norm(sgd[-1] - mean)
    with pytest.raises(ValueError, match="bgd, sgd or mbgd"):
        mean_estimation_gd(x, "adam")


def test_plot_is_written(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 2))
    path = plot_mean_estimation(x, tmp_path / "sa.png", steps=30)
    assert path.read_bytes()[:4] == b"\x89PNG"
