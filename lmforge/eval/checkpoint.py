"""One checkpoint's evaluation: load the model and tokenizer, then perplexity on text files
(`lmforge.eval.perplexity`) and accuracy on each task (`lmforge.eval.accuracy`). With a
PEFT adapter folder the base is evaluated with the adapter applied (`lmforge.peft`'s
`load_adapted`: LoRA merged into the weights, other adapters attached).

    result = evaluate_checkpoint("runs/demo/model", tasks=["arithmetic"], text_files=[],
                                 samples=4, ks=(1, 4))
    result = evaluate_checkpoint(None, adapter="runs/sft-lora/model", tasks=["arithmetic"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.eval.accuracy import evaluate_accuracy
from lmforge.eval.perplexity import perplexity
from lmforge.eval.tasks import load_items
from lmforge.models.hf import load_model
from lmforge.peft.merging import adapter_base, load_adapted
from lmforge.tokenizer import load_tokenizer

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    folder: str | Path | None,
    *,
    adapter: str | Path | None = None,
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
    ``adapter``: a PEFT adapter folder applied to the model (``folder`` None: the base the
    adapter records); its own tokenizer.json, if any, is used.
    """
    if folder is None:
        if adapter is None:
            raise ValueError("evaluate_checkpoint needs a model folder or an adapter folder")
        folder = adapter_base(adapter)
    own_tokenizer = adapter is not None and (Path(adapter) / "tokenizer.json").is_file()
    tokenizer = load_tokenizer(adapter if own_tokenizer else folder)
    if adapter is None:
        model = load_model(folder, device=device).eval()
    else:
        model = load_adapted(folder, adapter).to(device or "cpu").eval()
    result: dict[str, Any] = {"model": str(folder)}
    if adapter is not None:
        result["adapter"] = str(adapter)
    if text_files:
        result["perplexity"] = perplexity(model, tokenizer, text_files, context)
    result["tasks"] = {}
    for task in tasks:
        items = load_items(task, problems, sampling.get("seed", 0), verifier)
        result["tasks"][task] = evaluate_accuracy(model, tokenizer, items, **sampling)
    return result
