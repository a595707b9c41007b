"""`lmforge rl solve`: the printed table and arrows, the files, clean errors."""

import json


def test_solve_gridworld_prints_values_and_arrows(run):
    code, out, err = run("rl", "solve", "--env", "gridworld", "--method", "vi")
    assert code == 0, err
    assert "values:" in out and "  10.00" in out and "policy:" in out and "○" in out


def test_solve_writes_figures_and_honours_rewards(run, tmp_path):
    code, out, err = run("rl", "solve", "--method", "pi", "--r-forbidden", "-10",
                         "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["method"] == "pi" and abs(max(saved["v"]) - 10.0) < 1e-9
    assert (tmp_path / "values_policy.png").is_file() and f"wrote {tmp_path}" in out


def test_learning_method_on_frozenlake(run, tmp_path):
    code, out, err = run("rl", "solve", "--env", "FrozenLake-v1", "--method", "qlearning",
                         "--episodes", "30", "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
    assert "■" in out and (tmp_path / "learning_curve.png").is_file()


def test_bad_flags_are_one_line_errors(run):
    code, _, err = run("rl", "solve", "--gamma", "1.5")
    assert code == 2 and "--gamma must be in [0, 1)" in err
    code, _, err = run("rl", "solve", "--env", "Nope-v9")
    assert code == 2 and "--env Nope-v9" in err and "Traceback" not in err
    code, _, err = run("rl", "solve", "--method", "magic")
    assert code == 2 and "invalid choice" in err


def test_stochastic_approximation_plot(run, tmp_path):
    code, out, err = run("rl", "sa", "--samples", "50", "--steps", "20", "--out", str(tmp_path))
    assert code == 0, err
    assert "bgd: ‖w_K − mean‖ = 0.0000" in out and "sgd:" in out
    assert (tmp_path / "mean_estimation.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run("rl", "sa", "--steps", "0", "--out", str(tmp_path))
    assert code == 2 and "must be ≥ 1" in err
