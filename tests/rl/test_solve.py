"""`solve`: methods on the grid world and gymnasium environments, the text and the files."""

import json

import gymnasium as gym
import numpy as np
import pytest

from lmforge.rl.solve import make_environment, solve, success_rate


def test_value_iteration_on_the_grid_world_writes_its_figures(tmp_path):
    result = solve("gridworld", "vi", gamma=0.9, out=tmp_path)
    assert result.value_error < 1e-8
    text = result.text()
    assert "gridworld · vi" in text and "  10.00" in text and "○" in text
    assert (tmp_path / "values_policy.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["method"] == "vi" and len(saved["v"]) == 25


def test_a_learning_method_writes_its_curve(tmp_path):
    result = solve("FrozenLake-v1", "qlearning", gamma=0.95, episodes=50, out=tmp_path)
    assert result.q.shape == (16, 4) and len(result.curves["episode return"]) == 50
    assert (tmp_path / "learning_curve.png").is_file()
    assert "←" in result.text() or "↓" in result.text()


def test_planning_scores_a_perfect_frozenlake_policy():
    result = solve("FrozenLake-v1", "pi", gamma=0.99)
    assert result.value_error < 1e-7
    _, env = make_environment("FrozenLake-v1")
    rate = success_rate(env, result.policy, episodes=100)
    assert 0.6 < rate <= 1.0  # 4×4 slippery, 100-step limit: ≈ 0.74


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="--method must be one of"):
        solve("gridworld", "magic")
    with pytest.raises(ValueError, match="--env NoSuchEnv-v0"):
        make_environment("NoSuchEnv-v0")


def test_gymnasium_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gymnasium", None)
    with pytest.raises(ValueError, match="needs gymnasium"):
        make_environment("FrozenLake-v1")
    mdp, env = make_environment("gridworld")
    assert mdp.num_states == 25 and env.reset(seed=0)[0] in range(25)
    assert np.isclose(mdp.initial.sum(), 1.0) and gym  # gymnasium itself stays importable
