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

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    "prompt_record",
    "read_prompt_answers",
    "record_fields",
    "task_problems",
]


@dataclass(frozen=True)
class PromptAnswer:
    """A prompt from the user's data: ``prompt`` is a string or a conversation (a list of
    ``{"role", "content"}`` messages, rendered through the chat template); ``answer`` the
    reference answer the built-in reward checks (math_verify), if the record has one;
    ``fields`` every other field of the record (handed to custom rewards); ``source`` the
    ``file:line`` it came from (for error messages)."""

    prompt: str | list[dict[str, Any]]
    answer: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="", compare=False)


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
    val_paths: Sequence[str] = (),
    val_fraction: float = 0.1,
) -> list[Any]:
    """``n`` problems of ``task`` (``split`` "train" or "test"): ``arithmetic`` (``digits``,
    ``ops``), ``countdown`` (``num_numbers``, ``max_number``, ``max_target``) or ``prompts``
    (`PromptAnswer` s from the data ``paths``). The generators' test split is disjoint from
    their train split. For ``prompts`` the test split is ``val_paths`` when given, else a
    seeded ``val_fraction`` of the records (`lmforge.train.sft.split_validation`, as SFT
    holds out examples: shuffled with ``seed``, at least one when > 0). The defaults are the
    task generators' own."""
    if task == "arithmetic":
        from lmforge.data.tasks.arithmetic import arithmetic_problems

        return arithmetic_problems(n, seed, split, digits, tuple(ops))
    if task == "countdown":
        from lmforge.data.tasks.countdown import countdown_problems

        return countdown_problems(n, seed, split, num_numbers, max_number, max_target)
    if task != "prompts":
        raise ValueError(f"unknown task {task!r} (arithmetic, countdown, prompts)")
    from lmforge.train.sft import split_validation

    if val_paths:
        items = read_prompt_answers(paths if split == "train" else val_paths)
    else:
        train, test = split_validation(read_prompt_answers(paths), val_fraction, seed)
        items = train if split == "train" else test
    return items[:n]


def _read_records(path: str) -> list[tuple[int, Any]]:
    """``(line, record)`` of a JSONL file, or of a JSON array file (line = position + 1)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    out = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from exc
    return out


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    ):
        raise ValueError(f"{where}: a conversation must be a list of {{role, content}} messages")
    return [dict(m) for m in value]


def prompt_record(record: Any, where: str) -> PromptAnswer:
    """A data record as a `PromptAnswer`: ``prompt`` (a string or a message list) or
    ``messages`` (a conversation; a final assistant turn is not part of the prompt and goes to
    the rewards as ``reference``); ``answer`` if present; every other field kept."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    fields = dict(record)
    if "prompt" in fields:
        prompt = fields.pop("prompt")
        if not isinstance(prompt, str):
            prompt = _messages(prompt, where)
    elif "messages" in fields:
        prompt = _messages(fields.pop("messages"), where)
        if prompt[-1]["role"] == "assistant":
            fields.setdefault("reference", prompt.pop()["content"])
        if not prompt:
            raise ValueError(f"{where}: the conversation has no turn before the assistant's")
    else:
        raise ValueError(f"{where}: expected 'prompt' (text or messages) or 'messages'; the "
                         f"record has {', '.join(map(repr, record)) or 'no fields'}")  # fmt: skip
    answer = fields.get("answer")
    return PromptAnswer(prompt, None if answer is None else str(answer), fields, where)


def read_prompt_answers(paths: Sequence[str]) -> list[PromptAnswer]:
    """`PromptAnswer` s from JSONL (or JSON array) files of records with a ``prompt`` (text
    or messages) or ``messages``, an optional ``answer`` and any other fields (errors name the
    file and line)."""
    items = []
    for path in paths:
        for line_no, record in _read_records(path):
            items.append(prompt_record(record, f"{path}:{line_no}"))
    if not items:
        raise ValueError(f"{', '.join(paths)}: no prompts")
    return items


def record_fields(item: Any) -> tuple[Any, dict[str, Any], str]:
    """``(prompt, fields, where)`` of a task item, for custom rewards: a `PromptAnswer`'s
    prompt as written, its fields and ``answer``; a generated problem's prompt text, its
    dataclass fields, ``answer`` and the ``problem`` itself."""
    if isinstance(item, PromptAnswer):
        fields = dict(item.fields)
        if item.answer is not None:
            fields.setdefault("answer", item.answer)
        return item.prompt, fields, item.source
    if dataclasses.is_dataclass(item):
        fields = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
        fields.update(answer=getattr(item, "answer", None), problem=item)
        return item.prompt, fields, ""
    return getattr(item, "prompt", item), {}, ""


def r1_prompt_ids(tokenizer: Any, item: Any, system_prompt: str = "") -> list[int]:
    """The chat-formatted prompt of ``item`` (its ``.prompt``: text → one user turn; a
    conversation → its messages), ending with the assistant turn's opening, as token ids.
    ``system_prompt`` is prepended unless the conversation has its own system turn."""
    prompt = item.prompt
    turns = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    if turns and turns[0].get("role") == "system":
        messages = []
    messages.extend(turns)
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
        if item.answer is None:
            raise ValueError(
                f"{item.source or 'a prompt'}: no 'answer' for the built-in accuracy reward; "
                "add one to the record or name your own reward (--reward MODULE:FUNCTION)"
            )
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
    reward_fn: Callable[[Any, Completion], dict[str, float]] | None = None,
    first_index: int = 0,
) -> dict[str, Any]:
    """Held-out accuracy, format rate and mean completion length (in tokens), plus a few
    samples.

    ``samples`` = 0 decodes greedily (one completion per item). ``samples`` = k > 0 is
    DeepSeek-R1's pass@1 (DeepSeek-AI 2025, §3.1): k completions per item sampled at
    ``sampling.temperature`` / ``top_p`` (R1: 0.6 / 0.95), each request seeded from ``seed``
    and its (item, sample) position, and every metric averaged over all k × len(items).
    ``sampling.max_tokens`` and ``stop`` apply either way; its ``n`` is unused.

    ``reward_fn`` (default: `r1_reward`) scores each completion; the mean of every score it
    returns is reported (``accuracy`` and ``format`` for the R1 reward, ``reward`` and each
    custom reward's ``reward_<name>`` otherwise). ``count`` is the number of completions
    scored; ``first_index`` is the position of ``items[0]`` in the whole held-out set (the
    seeds follow it, so a set split across processes is sampled as in one).
    """
    if samples < 0:
        raise ValueError(f"samples={samples} must be ≥ 0 (0: greedy)")
    k = max(1, samples)
    score = reward_fn or r1_reward
    prompts = [encode(item) for item in items for _ in range(k)]
    seeds = [request_seed(seed, first_index + i, j) for i in range(len(items)) for j in range(k)]
    outs = sample_completions(model, tokenizer, prompts, sampling, seeds, greedy=samples == 0)
    repeated = [item for item in items for _ in range(k)]
    scores = [score(item, c) for item, c in zip(repeated, outs, strict=True)]
    n = max(1, len(outs))
    keys = [key for key in (scores[0] if scores else {"accuracy": 0.0, "format": 0.0})
            if all(key in s for s in scores)]  # fmt: skip
    result: dict[str, Any] = {key: sum(s[key] for s in scores) / n for key in keys}
    correct = "accuracy" if "accuracy" in keys else "reward"
    result.update(
        length=sum(len(c.completion_ids) for c in outs) / n,
        count=len(outs),
        samples=[
            {"prompt": item.prompt, "completion": c.text, correct: s.get(correct, 0.0),
             "correct": bool(s.get("accuracy", 0.0))}
            for item, c, s in list(zip(repeated, outs, scores, strict=True))[: 4 * k : k]
        ],
    )  # fmt: skip
    return result
