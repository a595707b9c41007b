"""Perplexity of a causal LM on text files: ``exp(−(1/N) Σ_t log p(x_t | x_<t))`` over every
token after the first of each file (Jelinek et al. 1977), the files tokenized whole (BOS
first when the tokenizer adds one) and cut into windows of at most ``context`` tokens that
overlap by one token, so every token is predicted exactly once.

    result = perplexity(model, tok, ["valid.txt"], context=256)
    result["perplexity"], result["tokens"], result["files"]["valid.txt"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["perplexity", "sequence_nll"]


@torch.no_grad()
def sequence_nll(model: nn.Module, ids: Sequence[int], context: int) -> tuple[float, int]:
    """``(Σ −log p(x_t | x_<t), number of predicted tokens)`` of token ids ``ids`` (every
    token after the first), in windows of ``context`` tokens overlapping by one."""
    if context < 2:
        raise ValueError(f"context={context} must be ≥ 2 tokens")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, max(1, len(ids) - 1), context - 1):
        window = torch.tensor([list(ids[start : start + context])], device=device)
        if window.shape[1] < 2:
            break
        logits = model(window).logits[0, :-1].float()
        targets = window[0, 1:]
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        count += targets.numel()
    return total, count


def perplexity(
    model: nn.Module,
    tokenizer: Any,
    paths: Sequence[str | Path],
    context: int | None = None,
) -> dict[str, Any]:
    """Perplexity and mean negative log-likelihood (nats/token) over all ``paths`` together
    and per file. ``context`` defaults to the model's ``max_position_embeddings``."""
    context = context or model.config.max_position_embeddings
    if context > model.config.max_position_embeddings:
        raise ValueError(
            f"context={context} exceeds the model's {model.config.max_position_embeddings} "
            "positions (max_position_embeddings)"
        )
    was_training = model.training
    model.eval()
    files: dict[str, dict[str, float]] = {}
    total, count = 0.0, 0
    try:
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file")
            ids = tokenizer.encode(path.read_text(encoding="utf-8"), add_special_tokens=True)
            nll, n = sequence_nll(model, ids, context)
            if n == 0:
                raise ValueError(f"{path}: fewer than 2 tokens, nothing to predict")
            files[str(path)] = {"nll": nll / n, "perplexity": math.exp(nll / n), "tokens": n}
            total, count = total + nll, count + n
    finally:
        model.train(was_training)
    return {"nll": total / count, "perplexity": math.exp(total / count), "tokens": count,
            "context": context, "files": files}  # fmt: skip
