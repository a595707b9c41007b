"""The embedded synthetic corpus: deterministic per seed, varied, and arithmetically true."""

from __future__ import annotations

import re

import pytest

from lmforge.data.tasks import synthetic_corpus
from lmforge.data.tasks.corpus import DOC_KINDS


def test_same_seed_same_corpus_and_prefix_property():
    assert synthetic_corpus(200, seed=7) == synthetic_corpus(200, seed=7)
    assert synthetic_corpus(50, seed=7) == synthetic_corpus(200, seed=7)[:50]
    assert synthetic_corpus(200, seed=7) != synthetic_corpus(200, seed=8)
    assert synthetic_corpus(0) == []


def test_variety():
    docs = synthetic_corpus(2000, seed=0)
    assert len(set(docs)) > 0.8 * len(docs)
    assert all(isinstance(d, str) and d.strip() for d in docs)
    starts = {
        "story": sum(d.startswith("Once upon a time") for d in docs),
        "arithmetic": sum(bool(re.match(r"\d+ [+-] \d+ = \d+", d)) for d in docs),
        "counting": sum(d.startswith(("Let us count", "After ")) for d in docs),
        "word_problem": sum(" more. Now " in d or " lost " in d for d in docs),
    }
    for kind, count in starts.items():
        share = DOC_KINDS[kind][1]
        assert 0.5 * share * len(docs) < count < 1.5 * share * len(docs), (kind, count)
    words = {w for d in docs for w in re.findall(r"[A-Za-z]+", d)}
    assert len(words) > 150


def test_every_equation_and_word_problem_is_true():
    docs = synthetic_corpus(1000, seed=3)
    equations = [m for d in docs for m in re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", d)]
    assert len(equations) > 500
    for a, op, b, c in equations:
        assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c)
    gains = [m for d in docs for m in re.findall(r"has (\d+) \w+\. \w+ gives \w+ (\d+) more\. Now \w+ has (\d+)", d)]  # fmt: skip
    assert gains and all(int(a) + int(b) == int(c) for a, b, c in gains)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "3"])
def test_bad_n_docs(bad):
    with pytest.raises(ValueError, match="n_docs"):
        synthetic_corpus(bad)
