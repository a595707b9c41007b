"""`lmforge demo`: the flags reach `run_demo`, and the stage commands the report lists build the
stages' configs (the pipeline: tests/align/test_r1_pipeline.py)."""

from __future__ import annotations

import shlex
from dataclasses import replace

import pytest

from lmforge.align.grpo_trainer import GRPOConfig
from lmforge.align.r1_pipeline import FAST, stages
from lmforge.cli import build_parser
from lmforge.commands.common import run_config
from lmforge.train.config import RunConfig


def test_demo_flags_reach_run_demo(monkeypatch, tmp_path, run):
    import lmforge.align.r1_pipeline as pipeline
    import lmforge.align.r1_zero as zero

    calls = []
    monkeypatch.setattr(pipeline, "run_demo", lambda out, **kw: calls.append((out, kw)))
    monkeypatch.setattr(pipeline, "run_demo_seeds",
                        lambda out, seeds, **kw: calls.append((out, seeds, kw)))  # fmt: skip
    monkeypatch.setattr(zero, "run_zero", lambda out, **kw: calls.append(("zero", out, kw)))
    assert run("demo", "--out", str(tmp_path / "d"), "--seed", "2", "--fast")[0] == 0
    assert run("demo")[0] == 0
    assert run("demo", "--seeds", "0, 1,2", "--jobs", "2")[0] == 0
    assert run("demo", "--zero", "--seed", "3")[0] == 0
    assert run("demo", "--zero", "--easy")[0] == 0
    assert run("demo", "--seed", "2", "--cold-start-acc", "0.5")[0] == 0
    assert run("demo", "--seeds", "0,1", "--cold-start-acc", "0.4")[0] == 0
    assert run("demo", "--cold-start-acc", "0")[0] == 0  # the fixed-step cold start
    assert calls == [(str(tmp_path / "d"), {"seed": 2, "fast": True}),
                     ("runs/demo", {"seed": 0, "fast": False}),
                     ("runs/demo", [0, 1, 2], {"fast": False, "jobs": 2}),
                     ("zero", "runs/demo-zero", {"seed": 3, "fast": False, "easy": False}),
                     ("zero", "runs/demo-zero", {"seed": 0, "fast": False, "easy": True}),
                     ("runs/demo", {"seed": 2, "fast": False, "cold_start_acc": 0.5}),
                     ("runs/demo", [0, 1], {"fast": False, "jobs": 1,
                                            "cold_start_acc": 0.4}),
                     ("runs/demo", {"seed": 0, "fast": False, "cold_start_acc": 0.0})]  # fmt: skip
    code, _, err = run("demo", "--seeds", "0,x")
    assert code == 2 and "'x' is not an integer" in err
    code, _, err = run("demo", "--zero", "--seeds", "0,1")
    assert code == 2 and "--zero runs one seed" in err
    code, _, err = run("demo", "--cold-start-acc", "1.5")
    assert code == 2 and "must be in [0, 1]" in err
    code, _, err = run("demo", "--zero", "--cold-start-acc", "0.5")
    assert code == 2 and "no SFT cold start" in err
    code, _, err = run("demo", "--easy")
    assert code == 2 and "--easy goes with --zero" in err
    assert len(calls) == 8


@pytest.mark.slow
def test_fast_gated_demo_reports_its_cold_start_chunks(tmp_path, run):
    """``--cold-start-acc``: SFT runs in chunks until the gate (unreachable here: the cap),
    and summary.json and report.md list each chunk's train-split accuracy."""
    import json

    code, _, err = run("demo", "--fast", "--cold-start-acc", "1", "--out", str(tmp_path / "d"))
    assert code == 0, err
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert [c["steps"] for c in summary["cold_start"]] == [5, 10]  # FAST: chunks of 5, cap 10
    assert all(0 <= c["accuracy"] <= 1 for c in summary["cold_start"])
    assert "train.max_steps=10" in summary["commands"]["sft"]
    assert "## Cold start (accuracy-gated SFT)" in (tmp_path / "d" / "report.md").read_text()


@pytest.mark.slow
def test_fast_demo_command_prints_the_result_line(tmp_path, run):
    code, out, err = run("demo", "--fast", "--out", str(tmp_path / "demo"))
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("RESULT demo sft_acc=")
    assert (tmp_path / "demo" / "report.md").is_file()


def test_stages_are_the_listed_commands(tmp_path):
    """Each stage's config is what its ``lmforge`` command line builds (the report's "rerun a
    stage alone" section), and the GRPO stage evaluates with the demo's sampling."""
    data = {
        "pretrain": tmp_path / "data" / "pretrain.jsonl",
        "sft": tmp_path / "data" / "sft.jsonl",
    }
    plan = stages(tmp_path, FAST, 3, data)
    assert list(plan) == ["pretrain", "sft", "grpo"]
    gated = stages(tmp_path, replace(FAST, cold_start_acc=0.5), 3, data)["sft"]
    for name, stage in [*plan.items(), ("sft", gated)]:
        cls = GRPOConfig if name == "grpo" else RunConfig
        args = build_parser().parse_args(shlex.split(stage.command())[1:])
        assert args.command == name
        assert run_config(args, cls) == stage.config(cls)
    assert plan["sft"].config().optim.schedule == "cosine"  # the fixed-step cold start
    assert gated.config().optim.schedule == "constant"  # gated: any chunk may be the last
    grpo = plan["grpo"].config(GRPOConfig)
    assert grpo.model.init_from == str(tmp_path / "sft" / "model")
    assert grpo.train.seed == 3 and grpo.grpo.eval_samples == FAST.eval_samples
