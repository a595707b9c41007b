"""lmforge/eval/accuracy.py: a tiny end-to-end sampled evaluation — samples through the
engine reproduce per problem whatever the batch, verdicts and pass@k / maj@k agree with an
independent recomputation."""

from __future__ import annotations

import json

import pytest

from lmforge.eval.accuracy import encode_prompt, evaluate_accuracy, problem_seed, sample_responses
from lmforge.eval.metrics import pass_at_k
from lmforge.eval.tasks import jsonl_items, task_items
from lmforge.eval.verifiers import extract_answer
from lmforge.infer import Engine, SamplingParams
from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model_and_tokenizer(chat_model_dir):
    return load_model(chat_model_dir).eval(), load_tokenizer(chat_model_dir)


def test_samples_are_seeded_per_problem_not_per_batch(model_and_tokenizer):
    model, tok = model_and_tokenizer
    items = task_items("arithmetic", 3)
    params = SamplingParams(max_tokens=6, temperature=1.0)
    together = sample_responses(model, tok, items, params, samples=2, seed=5, batch_size=3)
    one_by_one = sample_responses(model, tok, items, params, samples=2, seed=5, batch_size=1)
    assert together == one_by_one
    # sample j of a problem is the engine's completion with seed problem_seed + j
    engine = Engine(model, tok)
    ids = encode_prompt(tok, items[1].prompt, chat=False)
    seed = problem_seed(5, items[1].key)
    for j in range(2):
        out = engine.generate([ids], SamplingParams(max_tokens=6, temperature=1.0, seed=seed + j))
        assert out[0].text == together[1][j]
    other = sample_responses(model, tok, items, params, samples=2, seed=6, batch_size=3)
    assert other != together


def test_metrics_agree_with_the_verdicts(model_and_tokenizer, tmp_path):
    """A JSONL task whose regex accepts responses containing a letter 'e': the verdicts are
    recomputed from the returned responses, pass@k and maj@k from those verdicts."""
    model, tok = model_and_tokenizer
    path = tmp_path / "qa.jsonl"
    lines = [json.dumps({"prompt": p, "answer": r"(?s).*e.*"}) for p in ("the cat", "a dog", "one")]
    path.write_text("\n".join(lines))
    items = jsonl_items([path], verifier="regex")
    result = evaluate_accuracy(model, tok, items, samples=4, ks=(1, 2, 4), temperature=1.0,
                               max_tokens=5, seed=0, chat=True)  # fmt: skip
    rows = result["problems"]
    for row in rows:
        verdicts = ["e" in extract_answer(r) for r in row["responses"]]
        assert row["correct"] == verdicts
        c = sum(verdicts)
        for k in (1, 2, 4):
            assert row[f"pass@{k}"] == pytest.approx(pass_at_k(4, c, k))
        assert row["accuracy"] == pytest.approx(c / 4) == pytest.approx(row["pass@1"])
    metrics = result["metrics"]
    assert set(metrics) == {"pass@1", "pass@2", "pass@4", "maj@2", "maj@4"}
    for name, metric in metrics.items():
        assert metric["value"] == pytest.approx(sum(r[name] for r in rows) / len(rows))
        assert metric["ci_low"] >= 0 and metric["ci_high"] <= 1
        assert metric["ci_low"] <= metric["value"] <= metric["ci_high"]
    assert metrics["pass@1"]["value"] <= metrics["pass@2"]["value"] <= metrics["pass@4"]["value"]


def test_greedy_and_argument_checks(model_and_tokenizer):
    model, tok = model_and_tokenizer
    items = task_items("arithmetic", 2)
    a = evaluate_accuracy(model, tok, items, temperature=0.0, max_tokens=4)
    b = evaluate_accuracy(model, tok, items, temperature=0.0, max_tokens=4, seed=9)
    assert [r["responses"] for r in a["problems"]] == [r["responses"] for r in b["problems"]]
    with pytest.raises(ValueError, match=r"k=\[4\] must be in \[1, samples=2\]"):
        evaluate_accuracy(model, tok, items, samples=2, ks=(1, 4))
    with pytest.raises(ValueError, match="greedy decoding has one answer"):
        evaluate_accuracy(model, tok, items, samples=2, ks=(1,), temperature=0.0)
