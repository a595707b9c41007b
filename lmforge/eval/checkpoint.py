"""One checkpoint's evaluation: load the model and tokenizer, then perplexity on text files
(`lmforge.eval.perplexity`) and accuracy on each task (`lmforge.eval.accuracy`).

    result = evaluate_checkpoint("runs/demo/model", tasks=["arithmetic"], text_files=[],
                                 samples=4, ks=(1, 4))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.eval.accuracy import evaluate_accuracy
from lmforge.eval.perplexity import perplexity
from lmforge.eval.tasks import load_items
from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    folder: str | Path,
    *,
    tasks: Sequence[str] = (),
    text_files: Sequence[str | Path] = (),
    problems: int = 100,
    verifier: str = "exact",
    context: int | None = None,
    device: str | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """``{"perplexity": …, "tasks": {task: …}}`` of the checkpoint in ``folder``.

    ``tasks`` are built-in task names or JSONL files (their answers checked with
    ``verifier``; ``problems`` of each, ≤ 0: a file's every record); ``sampling`` goes to
    `evaluate_accuracy` (samples, ks, temperature, top_p, max_tokens, seed, chat, …).
    """
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, device=device).eval()
    result: dict[str, Any] = {"model": str(folder)}
    if text_files:
        result["perplexity"] = perplexity(model, tokenizer, text_files, context)
    result["tasks"] = {}
    for task in tasks:
        items = load_items(task, problems, sampling.get("seed", 0), verifier)
        result["tasks"][task] = evaluate_accuracy(model, tokenizer, items, **sampling)
    return result
