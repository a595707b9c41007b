"""lmforge/eval/hallucination.py: AUROC against a brute-force pair count, token-level
uncertainty against per-prefix forwards, SelfCheck scores (n-gram, and the model-as-judge
prompt variant against p(No) / (p(Yes) + p(No)) computed by hand from the logits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.eval.hallucination import (
    JUDGE_PROMPT,
    answer_uncertainty,
    auroc,
    disagreement,
    judge_inconsistency,
    selfcheck_judge,
    selfcheck_unigram,
)
from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer


def brute_force_auroc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pair_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, size=30).astype(float)  # many ties
        labels = rng.random(30) < 0.4
        if labels.all() or not labels.any():
            continue
        assert auroc(scores, labels) == pytest.approx(brute_force_auroc(scores, labels))
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    with pytest.raises(ValueError, match="one positive and one negative"):
        auroc([1.0, 2.0], [True, True])


def test_answer_uncertainty_matches_per_prefix_forwards(chat_model_dir):
    model = load_model(chat_model_dir).eval()
    prompt, answer = [5, 17, 42, 8], [99, 3, 120]
    got = answer_uncertainty(model, prompt, answer)
    nlls, entropies = [], []
    for i, token in enumerate(answer):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer[:i]])).logits[0, -1].double()
        p = torch.softmax(logits, -1)
        nlls.append(-math.log(p[token].item()))
        entropies.append(-(p * p.log()).sum().item())
    assert got["mean_nll"] == pytest.approx(sum(nlls) / 3, rel=1e-5)
    assert got["max_nll"] == pytest.approx(max(nlls), rel=1e-5)
    assert got["entropy"] == pytest.approx(sum(entropies) / 3, rel=1e-5)


def test_selfcheck_scores():
    # corpus: samples "paris", "paris", "rome" + answer "paris": counts paris 3, rome 1;
    # total 4, vocabulary 2 → p(paris) = 4/6
    assert selfcheck_unigram("Paris", ["paris", "paris", "rome"]) == pytest.approx(-math.log(4 / 6))
    assert selfcheck_unigram("Rome", ["paris", "paris", "rome"]) > selfcheck_unigram(
        "Paris", ["paris", "paris", "rome"]
    )
    assert disagreement("1987", ["1987", " 1987", "1990", "1955"]) == 0.5
    assert disagreement("x", []) == 0.0 and selfcheck_unigram("", ["a"]) == 0.0


def test_judge_inconsistency_is_p_no_over_p_yes_plus_p_no(chat_model_dir):
    assert judge_inconsistency(math.log(0.2), math.log(0.6)) == pytest.approx(0.75)
    assert judge_inconsistency(-1000.0, -1000.0) == 0.5  # stable far below exp's range
    model, tok = load_model(chat_model_dir).eval(), load_tokenizer(chat_model_dir)
    question, answer, samples = "Where was Bo Ka born?", "Dunmere", ["Dunmere", "Eastvale"]
    expected = []
    for sample in samples:  # by hand: one forward per continuation, softmax, product
        text = f"Context: {question} {sample}\n\nSentence: {question} {answer}\n\n"
        text += "Is the sentence supported by the context above? Answer Yes or No.\n\nAnswer:"
        assert text == JUDGE_PROMPT.format(question=question, sample=sample, answer=answer)
        prompt = tok.encode(text, add_special_tokens=True)
        p = {}
        for word in (" Yes", " No"):
            cont = tok.encode(word)
            with torch.no_grad():
                logits = model(torch.tensor([prompt + cont])).logits[0].double()
            probs = torch.softmax(logits, -1)
            p[word] = math.prod(probs[len(prompt) - 1 + i, t].item() for i, t in enumerate(cont))
        expected.append(p[" No"] / (p[" Yes"] + p[" No"]))
    got = selfcheck_judge(model, tok, question, answer, samples)
    assert got == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert 0.0 < got < 1.0 and selfcheck_judge(model, tok, question, answer, []) == 0.0
