"""Task accuracy from samples: every problem's completions drawn through the engine
(`lmforge.infer.Engine`, batched, each problem seeded from the run seed and its key), the
answers extracted and verified, then pass@k (Chen et al. 2021, eq. 1; pass@1 is the mean
accuracy over all samples) and maj@k (self-consistency), each with a bootstrap confidence
interval over problems.

    result = evaluate_accuracy(model, tok, task_items("arithmetic", 100), samples=8,
                               ks=(1, 4, 8), temperature=0.6, top_p=0.95)
    result["metrics"]["pass@1"]     # {"value": …, "ci_low": …, "ci_high": …}

DeepSeek-R1's protocol (§3.1) is pass@1 estimated from k samples at temperature 0.6, top-p
0.95: ``samples=k, ks=(1,)``. ``temperature=0`` decodes greedily (one sample per problem).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lmforge.eval.metrics import bootstrap_ci, maj_at_k, mean, pass_at_k
from lmforge.eval.tasks import EvalItem
from lmforge.eval.verifiers import extract_answer, normalize_answer
from lmforge.infer import Engine, SamplingParams

__all__ = ["encode_prompt", "evaluate_accuracy", "problem_seed", "sample_responses"]


def problem_seed(seed: int, key: str) -> int:
    """A stable 63-bit sampling seed for the problem ``key`` in a run seeded ``seed``
    (first 8 bytes of SHA-256): a problem's samples do not depend on the batch it is in."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def encode_prompt(tokenizer: Any, prompt: str | list[dict[str, Any]], chat: bool) -> list[int]:
    """Token ids of ``prompt``: through the chat template (ending with the assistant turn's
    opening) when ``chat`` or when it is a message list, else the plain text with BOS."""
    if chat or isinstance(prompt, list):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    return tokenizer.encode(prompt, add_special_tokens=True)


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[EvalItem],
    params: SamplingParams,
    *,
    samples: int = 1,
    seed: int = 0,
    chat: bool = False,
    batch_size: int = 16,
) -> list[list[str]]:
    """``samples`` completions (text) of every item, through one `Engine`, ``batch_size``
    problems at a time; sample j of a problem uses seed `problem_seed` + j."""
    if samples < 1:
        raise ValueError(f"samples={samples} must be ≥ 1")
    if params.greedy and samples > 1:
        raise ValueError(f"samples={samples} with temperature 0: greedy decoding has one answer")
    engine = Engine(model, tokenizer, max_num_seqs=max(1, batch_size * samples))
    stop_ids = tuple(getattr(tokenizer, "stop_token_ids", ()) or ())
    out: list[list[str]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        prompts = [encode_prompt(tokenizer, item.prompt, chat) for item in chunk]
        per_prompt = [
            SamplingParams(**{**params.__dict__, "n": samples,
                              "seed": problem_seed(seed, item.key),
                              "stop_token_ids": tuple(params.stop_token_ids) + stop_ids})
            for item in chunk
        ]  # fmt: skip
        outputs = engine.generate(prompts, per_prompt)
        for i in range(len(chunk)):
            out.append([o.text for o in outputs[i * samples : (i + 1) * samples]])
    return out


def score_problem(item: EvalItem, responses: Sequence[str], ks: Sequence[int]) -> dict[str, Any]:
    """One problem's extracted answers, verdicts, pass@k and maj@k for every k in ``ks``."""
    answers = [extract_answer(r) for r in responses]
    correct = [bool(item.check(a)) for a in answers]
    votes = [normalize_answer(a) or None for a in answers]
    n, c = len(responses), sum(correct)
    row: dict[str, Any] = {
        "key": item.key,
        "prompt": item.prompt,
        "reference": item.reference,
        "responses": list(responses),
        "correct": correct,
        "accuracy": c / n,
    }
    for k in ks:
        row[f"pass@{k}"] = pass_at_k(n, c, k)
        if k > 1:
            row[f"maj@{k}"] = maj_at_k(votes, correct, k)
    return row


def summarize(rows: Sequence[dict[str, Any]], confidence: float, seed: int) -> dict[str, Any]:
    """Mean of every per-problem pass@k / maj@k of ``rows`` with its bootstrap interval
    (pass@1 is the mean accuracy over all samples)."""
    names = [k for k in rows[0] if k.startswith(("pass@", "maj@"))]
    metrics = {}
    for name in names:
        values = [r[name] for r in rows]
        low, high = bootstrap_ci(values, confidence, seed=seed)
        metrics[name] = {"value": mean(values), "ci_low": low, "ci_high": high}
    return metrics


def evaluate_accuracy(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[EvalItem],
    *,
    samples: int = 1,
    ks: Sequence[int] = (1,),
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_tokens: int = 64,
    seed: int = 0,
    chat: bool = False,
    batch_size: int = 16,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Sample, verify and summarise (see the module docstring). Returns ``{"metrics":
    {name: {value, ci_low, ci_high}}, "problems": [per-problem rows], "settings": {…}}``."""
    if not items:
        raise ValueError("no problems to evaluate")
    bad = [k for k in ks if not 1 <= k <= samples]
    if bad:
        raise ValueError(f"k={bad} must be in [1, samples={samples}]: draw at least k samples")
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
    responses = sample_responses(model, tokenizer, items, params, samples=samples, seed=seed,
                                 chat=chat, batch_size=batch_size)  # fmt: skip
    rows = [score_problem(item, r, ks) for item, r in zip(items, responses, strict=True)]
    settings = dict(samples=samples, ks=list(ks), temperature=temperature, top_p=top_p,
                    max_tokens=max_tokens, seed=seed, chat=chat, confidence=confidence,
                    problems=len(items))  # fmt: skip
    return {"metrics": summarize(rows, confidence, seed), "problems": rows, "settings": settings}
