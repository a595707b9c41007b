"""lmforge/commands/scaling.py: ``lmforge scaling plan/fit/flops``."""

from __future__ import annotations

import json
import math

import pytest

from lmforge.eval.scaling import load_fit


def test_plan_prints_the_papers_recommendation(run):
    code, out, err = run("scaling", "plan", "--compute", "1e21", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["batch_tokens"] == pytest.approx(0.2920 * 1e21**0.3271)
    assert plan["lr"] == pytest.approx(0.3118 * 1e21**-0.1250)
    assert plan["model_scale"] == pytest.approx(0.1715 * 1e21**0.5243)
    assert plan["tokens"] == pytest.approx(5.8316 * 1e21**0.4757)
    assert plan["batch_sequences"] == pytest.approx(plan["batch_tokens"] / 4096)
    code, out, _ = run("scaling", "plan", "--compute", "1e21")
    assert code == 0 and "learning rate" in out and "0.0007394" in out


def test_fit_then_plan_from_the_fitted_file(tmp_path, run):
    runs = []
    for c in (1e12, 1e13, 1e14):
        for f in (0.5, 1.0, 2.0):
            loss = 2 + math.log(f) ** 2
            runs.append(dict(compute=c, batch=1e3 * c**0.25 * f, lr=c**-0.1 / f, loss=loss))
            runs.append(dict(compute=c, model_scale=c**0.6 * f, loss=loss))
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    code, out, err = run("scaling", "fit", str(path), "--out", str(tmp_path / "fit.json"))
    assert code == 0, err
    fit = load_fit(tmp_path / "fit.json")
    assert fit.batch.exponent == pytest.approx(0.25) and fit.lr.exponent == pytest.approx(-0.1)
    assert fit.model_scale.exponent == pytest.approx(0.6)
    assert fit.tokens.exponent == pytest.approx(0.4)
    code, out, err = run("scaling", "plan", "--compute", "1e16", "--fit",
                         str(tmp_path / "fit.json"), "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["batch_tokens"] == pytest.approx(1e3 * 1e16**0.25, rel=1e-6)


def test_flops_and_errors(tmp_path, run):
    code, out, _ = run("scaling", "flops", "--layers", "2", "--d-model", "48", "--seq-len", "32",
                       "--tokens", "1e6")  # fmt: skip
    assert code == 0 and "= 3.502e+05 FLOPs per token" in out and "C = M·D = 3.502e+11" in out
    code, _, err = run("scaling", "plan", "--compute", "0")
    assert code == 2 and "--compute" in err
    code, _, err = run("scaling", "fit", str(tmp_path / "none.jsonl"))
    assert code == 2 and "no such file" in err


def test_sweep_trains_every_point_once_and_fits(tmp_path, run):
    argv = ["scaling", "sweep", "--out", str(tmp_path / "sw"), "--budgets", "2e8,4e8",
            "--batch-sizes", "4", "--lrs", "1e-2", "--shape", "1x48", "--shapes", "1x48",
            "--docs", "40"]  # fmt: skip
    code, out, err = run(*argv)
    assert code == 0, err
    runs = [json.loads(line) for line in (tmp_path / "sw" / "runs.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in runs] == [9, 18]  # the IsoFLOP point is the grid point: reused
    assert load_fit(tmp_path / "sw" / "fit.json").batch is not None
    code, _, err = run("scaling", "sweep", "--out", str(tmp_path / "x"), "--budgets", "1e9",
                       "--shape", "2-48")  # fmt: skip
    assert code == 2 and "--shape '2-48'" in err
