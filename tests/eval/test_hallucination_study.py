"""lmforge/eval/hallucination_study.py: selective answering's rates and threshold (by hand),
and a tiny study end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lmforge.eval.hallucination_study import (
    DPOSetting,
    choose_threshold,
    dpo_start_model,
    logprob_shifts,
    run_study,
    selective_rates,
    split_fit_people,
    train_fact_model,
)
from lmforge.eval.knowledge import knowledge_world

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
    grid = (DPOSetting(steps=2), DPOSetting(beta=0.1, label_smoothing=0.0, lr=3e-3, steps=1))
    result = run_study(tmp_path, people=10, steps=3, samples=2, seed=0, abstain_steps=0,
                       dpo_grid=grid)  # fmt: skip
    assert result["questions"] == 30 and result["held_out_questions"] == 3 * (1 + 2)
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and sum(r["known"] for r in rows) == 15
    assert sum(r["held_out"] for r in rows) == 9
    assert sum(r["val"] for r in rows) == 3 and not any(r["val"] and r["held_out"] for r in rows)
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert "halluc_rate_after" not in result  # no SFT abstention training asked for
    assert result["dpo_start"] == "fact"  # so DPO falls back to the fact-trained start
    assert result["fit_people"] == {"sft_half": 3, "dpo_half": 3, "validation": 1}
    # one DPO run per setting, each from the fact model, with its own β, ε, lr and steps
    assert [g["setting"] for g in result["dpo_grid"]] == [dataclasses.asdict(g) for g in grid]
    for n, setting in enumerate(grid):
        config = (tmp_path / "abstain-dpo" / str(n) / "run" / "config.yaml").read_text()
        assert f"init_from: {tmp_path / 'run' / 'model'}\n" in config
        assert f"label_smoothing: {setting.label_smoothing}\n" in config
        assert f"max_steps: {setting.steps}\n" in config
    # the chosen setting is the best on the validation questions
    scores = [g["val"]["score"] for g in result["dpo_grid"]]
    assert result["dpo_setting"] == result["dpo_grid"][scores.index(max(scores))]["setting"]
    for g in result["dpo_grid"]:
        v = g["val"]
        assert v["score"] == pytest.approx(v["accuracy"] - v["hallucination_rate"])
        assert g["shifts"].keys() == {"abstain_chosen", "answer_rejected", "answer_chosen",
                                      "abstain_rejected", "abstain_probe"}  # fmt: skip
    # pairs: the training people's questions only (plain DPO: both halves), balanced
    pairs = [json.loads(x) for x in (tmp_path / "abstain-dpo" / "0" / "pairs.jsonl").open()]
    assert len(pairs) == result["dpo_pairs"] and pairs
    assert all(p.keys() == {"prompt", "chosen", "rejected"} for p in pairs)
    train_names = {r["key"].split(":")[0] for r in rows if not (r["held_out"] or r["val"])}
    asked = {p["prompt"] for p in pairs}
    assert all(any(name in q for name in train_names) for q in asked)
    abstain_first = sum(p["chosen"] == " I don't know" for p in pairs)
    assert abstain_first in (0, len(pairs), len(pairs) / 2)  # balanced when both kinds occur
    held = [r for r in rows if r["held_out"]]
    assert all("dpo_answer_after" in r and 0.0 <= r["judge"] <= 1.0 for r in held)
    assert 0.0 <= result["dpo_halluc_rate_after"] <= result["dpo_answer_rate_after"] <= 1.0
    assert 0.0 <= result["selective_halluc_rate"] <= result["selective_answer_rate"] <= 1.0


def test_fit_split_is_disjoint_seeded_and_sized():
    names = [f"p{i}" for i in range(23)]
    sft_half, dpo_half, val = split_fit_people(names, seed=3)
    assert (len(sft_half), len(dpo_half), len(val)) == (9, 9, 5)
    assert sorted(sft_half + dpo_half + val) == sorted(names)
    assert split_fit_people(list(reversed(names)), seed=3) == (sft_half, dpo_half, val)
    assert split_fit_people(names, seed=4) != (sft_half, dpo_half, val)
    assert split_fit_people(["a", "b"], seed=0)[2] != []  # at least one validation person


def test_logprob_shifts_match_a_hand_computation(tmp_path):
    from lmforge.eval.accuracy import encode_prompt
    from lmforge.eval.hallucination import continuation_logprob
    from lmforge.eval.knowledge import question_items
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer

    docs = ["Q: Where was Bo Ka born? A: Dunmere", "Q: Where was Mi Lu born? A: Eastvale"]
    start = train_fact_model(docs, tmp_path / "a", steps=2)
    tuned = train_fact_model(docs, tmp_path / "b", steps=3, init_from=start, lr=1e-2)
    pairs = [{"prompt": "Q: Where was Bo Ka born? A:", "chosen": " I don't know",
              "rejected": " Eastvale"},
             {"prompt": "Q: Where was Mi Lu born? A:", "chosen": " Eastvale",
              "rejected": " I don't know"}]  # fmt: skip
    probe = question_items([knowledge_world(1)[0]], attributes=("city",))
    shifts = logprob_shifts(start, tuned, pairs + pairs[:1], probe)  # duplicates count once
    tok = load_tokenizer(start)
    a, b = (load_model(m).eval() for m in (start, tuned))

    def delta(prompt: str, completion: str, eos: bool = True) -> float:
        ids = tok.encode(prompt, add_special_tokens=True)
        tail = tok.encode(completion) + ([tok.eos_token_id] if eos else [])
        return continuation_logprob(b, ids, tail) - continuation_logprob(a, ids, tail)

    expect = {"abstain_chosen": delta(pairs[0]["prompt"], pairs[0]["chosen"]),
              "answer_rejected": delta(pairs[0]["prompt"], pairs[0]["rejected"]),
              "answer_chosen": delta(pairs[1]["prompt"], pairs[1]["chosen"]),
              "abstain_rejected": delta(pairs[1]["prompt"], pairs[1]["rejected"]),
              "abstain_probe": delta(probe[0].prompt, " I don't know", eos=False)}  # fmt: skip
    assert encode_prompt(tok, probe[0].prompt, chat=False) == tok.encode(
        probe[0].prompt, add_special_tokens=True)  # fmt: skip
    assert shifts == pytest.approx(expect, abs=1e-4)
    assert any(abs(v) > 1e-3 for v in expect.values())  # the models do differ


def test_dpo_starts_from_the_sft_model_unless_told_or_absent(tmp_path):
    fact, sft = tmp_path / "fact", tmp_path / "sft"
    assert dpo_start_model(fact, sft) == sft
    assert dpo_start_model(fact, sft, "fact") == fact
    assert dpo_start_model(fact, None, "sft") == fact  # no SFT stage was run
    with pytest.raises(ValueError, match="dpo_from"):
        dpo_start_model(fact, sft, "ref")


def test_tiny_chat_study_asks_through_the_template(tmp_path):
    # lr 0: DPO leaves its start (the SFT model of the first half) unchanged
    result = run_study(tmp_path, people=6, steps=2, samples=1, seed=0, abstain_steps=1,
                       dpo_steps=1, dpo_lr=0.0, judge=False, chat=True,
                       dpo_grid=(DPOSetting(),))  # fmt: skip
    assert result["questions"] == 18 and result["judge_auroc"] is None
    docs = [json.loads(x)["text"] for x in (tmp_path / "facts.jsonl").read_text().splitlines()]
    assert all("<|im_start|>assistant\n" in d and "Q:" not in d for d in docs)
    for sft in ("abstain", "abstain-half"):
        text = (tmp_path / sft / "facts.jsonl").read_text()
        assert "<|im_start|>user" in text and "Q:" not in text
    pairs = (tmp_path / "abstain-dpo" / "0" / "pairs.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(x)["prompt"], list) for x in pairs)
    assert {"halluc_rate_after", "dpo_halluc_rate_after"} <= result.keys()
    assert result["dpo_start"] == "sft"
    config = (tmp_path / "abstain-dpo" / "0" / "run" / "config.yaml").read_text()
    assert f"init_from: {tmp_path / 'abstain-half' / 'run' / 'model'}\n" in config
    assert "max_steps: 1\n" in config and "lr: 0.0\n" in config
    for k in ("halluc_rate", "answer_rate", "accuracy"):
        assert result[f"dpo_{k}_after"] == result[f"dpo_start_{k}_after"]
    held = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    held = [r for r in held if r["held_out"]]
    assert all(r["dpo_answer_after"] == r["dpo_start_answer_after"] for r in held)
    assert all(v == pytest.approx(0.0, abs=1e-5)
               for v in result["dpo_grid"][0]["shifts"].values() if v is not None)  # fmt: skip
