"""Verifiable tasks for RL fine-tuning (GRPO, PPO): problems, prompts, R1 reward, accuracy.

    problems = task_problems("arithmetic", "train", 2000, seed=0, digits=2)
    prompt_ids = r1_prompt_ids(tokenizer, problems[0])          # chat-formatted, to generate
    scores = r1_reward(problems[0], completion)                 # reward, accuracy, format
    result = evaluate_accuracy(model, tok, held_out, encode, sampling, samples=4)

Problems come from lmforge's generated tasks (`lmforge.data.tasks`: arithmetic, countdown —
each with a verifier) or from JSONL records with a prompt and a reference answer
(`PromptAnswer`, checked by math_verify). GRPO (`lmforge.align.grpo_trainer`) and PPO
(`lmforge.align.ppo_trainer`) draw their prompts from here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.align.rewards import (
    accuracy_reward,
    format_reward,
    soft_overlong_punishment,
    task_reward,
)
from lmforge.align.rollout import Completion, request_seed, sample_completions
from lmforge.infer import SamplingParams

__all__ = [
    "PromptAnswer",
    "evaluate_accuracy",
    "r1_prompt_ids",
    "r1_reward",
    "read_prompt_answers",
    "task_problems",
]


@dataclass(frozen=True)
class PromptAnswer:
    """A prompt with a reference answer, checked by `accuracy_reward` (math_verify)."""

    prompt: str
    answer: str


def task_problems(
    task: str,
    split: str,
    n: int,
    seed: int,
    *,
    digits: int = 2,
    ops: Sequence[str] = ("+", "-"),
    num_numbers: int = 3,
    max_number: int = 20,
    max_target: int = 100,
    paths: Sequence[str] = (),
) -> list[Any]:
    """``n`` problems of ``task`` (``split`` "train" or "test"): ``arithmetic`` (``digits``,
    ``ops``), ``countdown`` (``num_numbers``, ``max_number``, ``max_target``) or ``prompts``
    (`PromptAnswer` s from the JSONL ``paths``; the first tenth is the test split). The
    defaults are the task generators' own."""
    if task == "arithmetic":
        from lmforge.data.tasks.arithmetic import arithmetic_problems

        return arithmetic_problems(n, seed, split, digits, tuple(ops))
    if task == "countdown":
        from lmforge.data.tasks.countdown import countdown_problems

        return countdown_problems(n, seed, split, num_numbers, max_number, max_target)
    items = read_prompt_answers(paths)
    cut = max(1, len(items) // 10)  # the last tenth is held out
    return (items[cut:] if split == "train" else items[:cut])[:n]


def read_prompt_answers(paths: Sequence[str]) -> list[PromptAnswer]:
    """`PromptAnswer` s from JSONL files of ``{"prompt": …, "answer": …}`` records (errors name
    the file and line)."""
    items = []
    for path in paths:
        for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                items.append(PromptAnswer(str(record["prompt"]), str(record["answer"])))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{line_no}: expected a JSON object with 'prompt' and 'answer' "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
    if not items:
        raise ValueError(f"{', '.join(paths)}: no prompts")
    return items


def r1_prompt_ids(tokenizer: Any, item: Any, system_prompt: str = "") -> list[int]:
    """The chat-formatted prompt of ``item`` (its ``.prompt``), ending with the assistant
    turn's opening, as token ids."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": item.prompt})
    return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def r1_reward(
    item: Any,
    completion: Completion,
    format_weight: float = 0.1,
    max_new_tokens: int = 0,
    overlong_cache: int = 0,
) -> dict[str, float]:
    """DeepSeek-R1's rule reward: accuracy (the task's verifier, or math_verify for a
    `PromptAnswer`) + ``format_weight`` × the ``<think>…</think><answer>…</answer>`` format
    reward, plus DAPO's soft overlong punishment when ``overlong_cache`` > 0."""
    text = completion.text
    if isinstance(item, PromptAnswer):
        accuracy = accuracy_reward(text, item.answer).score
    else:
        accuracy = task_reward(text, item).score
    fmt = format_reward(text).score
    reward = accuracy + format_weight * fmt
    if overlong_cache:
        n = len(completion.completion_ids)
        reward += soft_overlong_punishment(n, max_new_tokens, overlong_cache).score
    return {"reward": reward, "accuracy": accuracy, "format": fmt}


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[Any],
    encode: Callable[[Any], list[int]],
    sampling: SamplingParams,
    *,
    samples: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out accuracy, format rate and mean completion length (in tokens), plus a few
    samples.

    ``samples`` = 0 decodes greedily (one completion per item). ``samples`` = k > 0 is
    DeepSeek-R1's pass@1 (DeepSeek-AI 2025, §3.1): k completions per item sampled at
    ``sampling.temperature`` / ``top_p`` (R1: 0.6 / 0.95), each request seeded from ``seed``
    and its (item, sample) position, and every metric averaged over all k × len(items).
    ``sampling.max_tokens`` and ``stop`` apply either way; its ``n`` is unused.
    """
    if samples < 0:
        raise ValueError(f"samples={samples} must be ≥ 0 (0: greedy)")
    k = max(1, samples)
    prompts = [encode(item) for item in items for _ in range(k)]
    seeds = [request_seed(seed, i, j) for i in range(len(items)) for j in range(k)]
    outs = sample_completions(model, tokenizer, prompts, sampling, seeds, greedy=samples == 0)
    repeated = [item for item in items for _ in range(k)]
    scores = [r1_reward(item, c) for item, c in zip(repeated, outs, strict=True)]
    n = max(1, len(outs))
    return {
        "accuracy": sum(s["accuracy"] for s in scores) / n,
        "format": sum(s["format"] for s in scores) / n,
        "length": sum(len(c.completion_ids) for c in outs) / n,
        "samples": [
            {"prompt": item.prompt, "completion": c.text, "correct": bool(s["accuracy"])}
            for item, c, s in list(zip(repeated, outs, scores, strict=True))[: 4 * k : k]
        ],
    }
