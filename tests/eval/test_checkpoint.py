"""lmforge/eval/checkpoint.py: a checkpoint folder evaluated end to end."""

from __future__ import annotations

import pytest

from lmforge.eval.accuracy import evaluate_accuracy
from lmforge.eval.checkpoint import evaluate_checkpoint
from lmforge.eval.perplexity import perplexity
from lmforge.eval.tasks import task_items
from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer


def test_checkpoint_result_is_the_parts_results(chat_model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a small story about a fox and a dog.")
    sampling = dict(samples=2, ks=(1, 2), temperature=1.0, max_tokens=4, seed=3)
    result = evaluate_checkpoint(chat_model_dir, tasks=["arithmetic"], text_files=[text],
                                 problems=3, **sampling)  # fmt: skip
    model, tok = load_model(chat_model_dir).eval(), load_tokenizer(chat_model_dir)
    assert result["perplexity"]["perplexity"] == pytest.approx(
        perplexity(model, tok, [text])["perplexity"]
    )
    direct = evaluate_accuracy(model, tok, task_items("arithmetic", 3, seed=3), **sampling)
    assert result["tasks"]["arithmetic"]["metrics"] == direct["metrics"]
    assert result["model"] == str(chat_model_dir)
