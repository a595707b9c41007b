"""lmforge/eval/perplexity.py: windowed perplexity against a token-by-token brute force and
against the model's own mean cross-entropy loss."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.eval.perplexity import perplexity, sequence_nll
from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model_and_tokenizer(chat_model_dir):
    return load_model(chat_model_dir).eval(), load_tokenizer(chat_model_dir)


def brute_force_nll(model, ids: list[int], context: int) -> float:
    """Σ −log p(x_t | window prefix), one forward per predicted token: token t is predicted
    in the window starting at ⌊(t−1)/(context−1)⌋·(context−1)."""
    total = 0.0
    for t in range(1, len(ids)):
        start = (t - 1) // (context - 1) * (context - 1)
        with torch.no_grad():
            logits = model(torch.tensor([ids[start:t]])).logits[0, -1]
        total -= torch.log_softmax(logits.double(), -1)[ids[t]].item()
    return total


def test_windowed_nll_matches_token_by_token_brute_force(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids = tok.encode("the cat sat on the mat and the dog ran to the park.", add_special_tokens=True)
    assert len(ids) > 9
    for context in (4, 9, 256):
        nll, count = sequence_nll(model, ids, context)
        assert count == len(ids) - 1
        assert nll == pytest.approx(brute_force_nll(model, ids, context), rel=1e-5)


def test_perplexity_of_files_is_exp_of_the_models_mean_loss(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    texts = {"a.txt": "once upon a time there was a fox.", "b.txt": "two plus two is four."}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    result = perplexity(model, tok, [tmp_path / n for n in texts])
    losses, counts = [], []
    for text in texts.values():
        ids = torch.tensor([tok.encode(text, add_special_tokens=True)])
        with torch.no_grad():
            losses.append(model(ids, labels=ids).loss.item())
        counts.append(ids.shape[1] - 1)
    total = sum(loss * n for loss, n in zip(losses, counts))
    assert result["tokens"] == sum(counts)
    assert result["perplexity"] == pytest.approx(math.exp(total / sum(counts)), rel=1e-5)
    per_file = result["files"][str(tmp_path / "a.txt")]
    assert per_file["perplexity"] == pytest.approx(math.exp(losses[0]), rel=1e-5)


def test_errors_name_the_problem(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    with pytest.raises(FileNotFoundError, match="missing.txt: no such file"):
        perplexity(model, tok, [tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="exceeds the model's 256 positions"):
        perplexity(model, tok, [], context=1000)
