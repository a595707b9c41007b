"""`lmforge demo`: the R1-style pipeline (fast setting end to end) and its data."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from lmforge.align.rewards import format_reward, task_reward
from lmforge.data.tasks.arithmetic import ArithmeticProblem, arithmetic_problems, split_of
from lmforge.demo import r1_solution, run_demo, worked_reasoning


def test_worked_reasoning_is_column_addition_with_carries():
    assert worked_reasoning(ArithmeticProblem(347, "+", 258)) == "7+8=15, 4+5+1=10, 3+2+1=6"
    assert worked_reasoning(ArithmeticProblem(95, "+", 7)) == "5+7=12, 9+0+1=10"
    with pytest.raises(ValueError, match="addition"):
        worked_reasoning(ArithmeticProblem(9, "-", 7))


def test_r1_solutions_get_full_rule_reward():
    for p in arithmetic_problems(50, seed=0, digits=3, ops=("+",)):
        text = r1_solution(p)
        assert format_reward(text).score == 1.0
        assert task_reward(text, p).score == 1.0
        # every column's digit sum is right (the reasoning is a correct derivation)
        for step in text.split("<think>")[1].split("</think>")[0].split(", "):
            lhs, rhs = step.split("=")
            assert sum(map(int, lhs.split("+"))) == int(rhs)


@pytest.mark.slow
def test_fast_demo_runs_every_stage_and_reports(tmp_path):
    console = Console(file=io.StringIO(), width=120)
    summary = run_demo(tmp_path / "demo", fast=True, console=console)
    out = tmp_path / "demo"
    for stage in ("pretrain", "sft", "grpo"):
        assert (out / stage / "model" / "config.json").is_file()
        assert 0 <= summary["accuracy"][stage]["accuracy"] <= 1
    assert (out / "model" / "tokenizer.json").is_file()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| sft |" in report and "lmforge grpo" in report and "curves.png" in report
    grpo = [json.loads(x) for x in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "accuracy", "length", "entropy"} <= set(grpo[0])
    # SFT chats and pretraining text come from the train split only
    sft = [json.loads(x) for x in (out / "data" / "sft.jsonl").read_text().splitlines()]
    questions = [c["messages"][0]["content"].removeprefix("What is ").rstrip("?") for c in sft]
    assert all(split_of(q) == "train" for q in questions)
    last = console.file.getvalue().strip().splitlines()[-1]
    assert last == (
        f"RESULT demo sft_acc={summary['sft_acc']:.1f} grpo_acc={summary['grpo_acc']:.1f}"
    )
