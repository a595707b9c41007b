"""lmforge/eval/hallucination_study.py: selective answering's rates and threshold (by hand),
and a tiny study end to end."""

from __future__ import annotations

import json

import pytest

from lmforge.eval.hallucination_study import (
    choose_threshold,
    dpo_start_model,
    run_study,
    selective_rates,
)

ROWS = [dict(selfcheck=0.1, correct=True), dict(selfcheck=0.2, correct=True),
        dict(selfcheck=0.3, correct=False), dict(selfcheck=0.4, correct=True),
        dict(selfcheck=0.9, correct=False), dict(selfcheck=1.0, correct=False)]  # fmt: skip


def test_selective_rates_count_over_all_questions():
    assert selective_rates(ROWS, 10.0) == (0.5, 1.0)
    assert selective_rates(ROWS, 0.4) == pytest.approx((1 / 6, 4 / 6))
    assert selective_rates(ROWS, 0.0) == (0.0, 0.0)


def test_threshold_keeps_the_most_answers_at_half_the_hallucinations():
    # answering all: 3/6 wrong; ≤ 1.5/6 allowed → thresholds 0.1 … 0.4 qualify; the largest
    assert choose_threshold(ROWS) == 0.4
    assert choose_threshold(ROWS, keep=0.0) == 0.2
    assert choose_threshold([dict(selfcheck=0.5, correct=False)]) < 0.5  # abstain on all


def test_tiny_study_writes_its_results(tmp_path):
    result = run_study(tmp_path, people=10, steps=3, samples=2, seed=0, abstain_steps=0,
                       dpo_steps=2)  # fmt: skip
    assert result["questions"] == 30 and result["held_out_questions"] == 3 * (1 + 2)
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and sum(r["known"] for r in rows) == 15
    assert sum(r["held_out"] for r in rows) == 9
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert "halluc_rate_after" not in result  # no SFT abstention training asked for
    assert result["dpo_start"] == "fact"  # so DPO falls back to the fact-trained start
    config = (tmp_path / "abstain-dpo" / "run" / "config.yaml").read_text()
    assert f"init_from: {tmp_path / 'run' / 'model'}\n" in config
    pairs = [
        json.loads(x)
        for x in (tmp_path / "abstain-dpo" / "pairs.jsonl").read_text().split("\n")
        if x
    ]
    assert len(pairs) == 21 and all(p.keys() == {"prompt", "chosen", "rejected"} for p in pairs)
    assert (tmp_path / "abstain-dpo" / "run" / "model" / "config.json").is_file()
    held = [r for r in rows if r["held_out"]]
    assert all("dpo_answer_after" in r and 0.0 <= r["judge"] <= 1.0 for r in held)
    assert 0.0 <= result["dpo_halluc_rate_after"] <= result["dpo_answer_rate_after"] <= 1.0
    assert 0.0 <= result["selective_halluc_rate"] <= result["selective_answer_rate"] <= 1.0


def test_dpo_starts_from_the_sft_model_unless_told_or_absent(tmp_path):
    fact, sft = tmp_path / "fact", tmp_path / "sft"
    assert dpo_start_model(fact, sft) == sft
    assert dpo_start_model(fact, sft, "fact") == fact
    assert dpo_start_model(fact, None, "sft") == fact  # no SFT stage was run
    with pytest.raises(ValueError, match="dpo_from"):
        dpo_start_model(fact, sft, "ref")


def test_tiny_chat_study_asks_through_the_template(tmp_path):
    # dpo_lr 0: DPO leaves its start unchanged, so SFT→DPO must answer exactly as SFT does
    result = run_study(tmp_path, people=6, steps=2, samples=1, seed=0, abstain_steps=1,
                       dpo_steps=1, dpo_lr=0.0, judge=False, chat=True)  # fmt: skip
    assert result["questions"] == 18 and result["judge_auroc"] is None
    docs = [json.loads(x)["text"] for x in (tmp_path / "facts.jsonl").read_text().splitlines()]
    assert all("<|im_start|>assistant\n" in d and "Q:" not in d for d in docs)
    sft = (tmp_path / "abstain" / "facts.jsonl").read_text()
    assert "<|im_start|>user" in sft and "Q:" not in sft
    pairs = (tmp_path / "abstain-dpo" / "pairs.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(x)["prompt"], list) for x in pairs)
    assert {"halluc_rate_after", "dpo_halluc_rate_after"} <= result.keys()
    assert result["dpo_start"] == "sft"
    config = (tmp_path / "abstain-dpo" / "run" / "config.yaml").read_text()
    assert f"init_from: {tmp_path / 'abstain' / 'run' / 'model'}\n" in config
    for k in ("halluc_rate", "answer_rate", "accuracy"):
        assert result[f"dpo_{k}_after"] == result[f"{k}_after"]
    held = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    held = [r for r in held if r["held_out"]]
    assert all(r["dpo_answer_after"] == r["answer_after"] for r in held)
