"""lmforge/eval/sweep.py: runs sized by compute, trained through pretrain, resumable."""

from __future__ import annotations

import json

import pytest

from lmforge.eval.flops import config_flops_per_token, deepseek_flops_per_token
from lmforge.eval.sweep import (
    SweepPoint,
    hyper_points,
    isoflop_points,
    point_config,
    run_sweep,
    split_points,
    sweep_base_config,
)
from lmforge.models.hf import load_model


def test_grids():
    assert len(hyper_points([1e9, 2e9], [4, 8], [1e-3, 3e-3, 1e-2], 2, 48)) == 12
    profile = split_points([1e9], [(1, 48), (2, 96)], 8, 1e-3)
    assert [(p.n_layer, p.d_model) for p in profile] == [(1, 48), (2, 96)]


def test_isoflop_points_use_each_budgets_best_grid_setting():
    hyper = [dict(compute=1e9, batch_size=4, lr=1e-2, loss=0.9),
             dict(compute=1e9, batch_size=8, lr=3e-3, loss=0.7),
             dict(compute=4e9, batch_size=16, lr=1e-3, loss=0.5),
             dict(compute=4e9, batch_size=8, lr=1e-2, loss=0.6)]  # fmt: skip
    points = isoflop_points(hyper, [(1, 32), (2, 48)])
    assert points == [SweepPoint(1e9, 1, 32, 8, 3e-3), SweepPoint(1e9, 2, 48, 8, 3e-3),
                      SweepPoint(4e9, 1, 32, 16, 1e-3), SweepPoint(4e9, 2, 48, 16, 1e-3)]  # fmt: skip
    at_eight = isoflop_points(hyper, [(1, 32)], batch_size=8)
    assert at_eight == [SweepPoint(1e9, 1, 32, 8, 3e-3), SweepPoint(4e9, 1, 32, 8, 1e-2)]


def test_widths_off_multiples_of_three_round_the_mlp(tmp_path):
    base = sweep_base_config(tmp_path, seq_len=32, docs=20, val_docs=2)
    config = point_config(base, SweepPoint(1e9, 1, 32, 4, 1e-3), tmp_path / "runs")
    overrides = config.model.overrides
    assert overrides["intermediate_size"] == 85 and overrides["num_attention_heads"] == 2


def test_point_config_spends_the_budget(tmp_path):
    base = sweep_base_config(tmp_path, seq_len=32, docs=50, val_docs=5)
    point = SweepPoint(compute=3e9, n_layer=2, d_model=48, batch_size=8, lr=2e-3)
    config = point_config(base, point, tmp_path / "runs")
    m = deepseek_flops_per_token(2, 48, 32)
    assert config.train.max_steps == round(3e9 / (m * 8 * 32))
    assert config.optim.schedule_steps == config.train.max_steps and config.optim.lr == 2e-3
    assert config.model.overrides["intermediate_size"] == 128
    assert config.out_dir == str(tmp_path / "runs" / point.name)


def test_runs_train_through_pretrain_and_resume(tmp_path):
    base = sweep_base_config(tmp_path, seq_len=32, docs=60, val_docs=10)
    points = [SweepPoint(2e8, 1, 48, 4, 3e-3), SweepPoint(4e8, 1, 48, 4, 3e-3)]
    runs = run_sweep(base, points, tmp_path)
    assert [r["steps"] for r in runs] == [9, 18]
    for run, point in zip(runs, points):
        model = load_model(tmp_path / "runs" / point.name / "model")
        assert config_flops_per_token(model.config, 32) == run["model_scale"]
        assert run["loss"] > 0 and run["batch"] == 4 * 32 and run["cpu_s"] > 0
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == runs
    assert run_sweep(base, points, tmp_path) == runs  # recorded: nothing retrained
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="multiple of 16"):
        run_sweep(base, [SweepPoint(1e9, 1, 40, 4, 1e-3)], tmp_path)
