"""The R1 demo's report (`lmforge.align.r1_report`): the seeds' aggregation and check, its
files and console lines (the per-run report: tests/align/test_r1_pipeline.py)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from lmforge.align.r1_report import (
    MIN_MEAN_GAIN,
    MIN_SEED_GAIN,
    aggregate_seeds,
    print_seeds,
    read_jsonl,
    write_seeds_report,
)


def summary(seed: int, sft: float, grpo: float) -> dict:
    """A run's summary as `run_demo` returns it (accuracies in points and as fractions)."""
    stage = lambda acc: {"accuracy": acc / 100, "greedy": min(1.0, acc / 80)}  # noqa: E731
    return {"seed": seed, "sft_acc": sft, "grpo_acc": grpo, "total_s": 60.0 + seed,
            "cpu_s": 50.0 + seed, "accuracy": {"sft": stage(sft), "grpo": stage(grpo)}}  # fmt: skip


def test_aggregate_seeds_means_gains_and_check():
    result = aggregate_seeds([summary(0, 40.0, 60.0), summary(1, 50.0, 56.0),
                              summary(2, 30.0, 44.0)])  # fmt: skip
    assert [r["gain"] for r in result["seeds"]] == pytest.approx([20.0, 6.0, 14.0])
    assert result["mean"] == pytest.approx({"sft_acc": 40.0, "grpo_acc": 160 / 3,
                                            "gain": 40 / 3})  # fmt: skip
    assert (result["sft_acc"], result["grpo_acc"]) == (result["mean"]["sft_acc"],
                                                       result["mean"]["grpo_acc"])  # fmt: skip
    assert result["min_gain"] == pytest.approx(6.0) and result["passed"]
    assert result["seeds"][0]["sft_greedy"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("runs", "passed"),
    [
        ([(0, 50.0, 50.0 + MIN_MEAN_GAIN)], True),  # the bar itself passes
        ([(0, 50.0, 50.0 + MIN_MEAN_GAIN - 0.1)], False),  # mean gain under the bar
        # a mean gain of 15 with one seed under the per-seed bar fails
        ([(0, 10.0, 40.0), (1, 50.0, 50.0 + MIN_SEED_GAIN - 0.5), (2, 40.0, 50.5)], False),
        ([(0, 10.0, 40.0), (1, 50.0, 50.0 + MIN_SEED_GAIN), (2, 40.0, 50.0)], True),
    ],
)
def test_check_needs_mean_gain_and_every_seed(runs, passed):
    assert aggregate_seeds([summary(*r) for r in runs])["passed"] is passed


def test_aggregate_needs_a_seed():
    with pytest.raises(ValueError, match="no seed"):
        aggregate_seeds([])


def test_seeds_report_and_result_line(tmp_path):
    result = aggregate_seeds([summary(0, 40.0, 60.0), summary(1, 50.0, 56.0)])
    machine = {"cpu": "Test CPU 9000", "cores": 2, "torch": "2.x"}
    result.update(total_s=130.0, cpu_s=110.0, jobs=2, machine=machine, run_dir=str(tmp_path))
    path = write_seeds_report(tmp_path, result)
    text = path.read_text()
    assert "Test CPU 9000 (2 cores" in text and "| 0 | 40.0% | 60.0% | +20.0 |" in text
    assert "| mean | 45.0% | 58.0% | +13.0 |" in text and "passed" in text
    assert json.loads((tmp_path / "seeds.json").read_text())["mean"]["gain"] == pytest.approx(13.0)
    console = Console(file=io.StringIO(), width=200)
    print_seeds(result, console)
    lines = console.file.getvalue().strip().splitlines()
    assert lines[-1] == "RESULT demo sft_acc=45.0 grpo_acc=58.0"
    assert any(line.startswith("mean") and "+13.0" in line for line in lines)


def test_read_jsonl_skips_missing_files(tmp_path):
    assert read_jsonl(tmp_path / "none.jsonl") == []
    (tmp_path / "m.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(tmp_path / "m.jsonl") == [{"a": 1}, {"a": 2}]
