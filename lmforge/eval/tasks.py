"""What an evaluation asks: `EvalItem` s (a prompt, a reference, a check) from the built-in
tasks (`lmforge.data.tasks`, their held-out "test" split) or from JSONL files of
``{"prompt": …, "answer": …}`` records checked by a named verifier
(`lmforge.eval.verifiers`).

    items = task_items("arithmetic", n=100, seed=0)
    items = jsonl_items(["qa.jsonl"], verifier="numeric")
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.tasks.arithmetic import arithmetic_problems, check_arithmetic
from lmforge.data.tasks.countdown import check_countdown, countdown_problems
from lmforge.eval.verifiers import get_verifier

__all__ = ["BUILTIN_TASKS", "EvalItem", "jsonl_items", "load_items", "task_items"]

BUILTIN_TASKS = ("arithmetic", "countdown")


@dataclass(frozen=True)
class EvalItem:
    """One problem: ``prompt`` (text, or a list of chat messages), ``reference`` (shown in
    reports; None if the check needs none), ``check(answer) -> bool`` on the extracted answer,
    and ``key`` (a stable id: the per-problem sampling seed derives from it)."""

    key: str
    prompt: str | list[dict[str, Any]]
    reference: str | None
    check: Callable[[str], bool]


def task_items(task: str, n: int, seed: int = 0, digits: int = 2) -> list[EvalItem]:
    """``n`` held-out ("test" split) problems of built-in ``task`` with its exact verifier."""
    if task == "arithmetic":
        problems: Sequence[Any] = arithmetic_problems(n, seed, "test", digits)
        verify: Callable[[Any, str], tuple[bool, str]] = check_arithmetic
    elif task == "countdown":
        problems, verify = countdown_problems(n, seed, "test"), check_countdown
    else:
        raise ValueError(f"unknown task {task!r}: choose {', '.join(BUILTIN_TASKS)}")
    return [
        EvalItem(f"{task}:{p.prompt}", p.prompt, p.answer,
                 lambda answer, p=p: verify(p, answer)[0])
        for p in problems
    ]  # fmt: skip


def jsonl_items(paths: Sequence[str | Path], verifier: str = "exact") -> list[EvalItem]:
    """One `EvalItem` per record of the JSONL ``paths``: ``prompt`` (text or chat messages)
    and ``answer`` (the reference, checked with ``verifier``). Errors name file and line."""
    check = get_verifier(verifier)
    items = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or "prompt" not in record or "answer" not in record:
                raise ValueError(f"{where}: expected an object with 'prompt' and 'answer'")
            prompt, reference = record["prompt"], str(record["answer"])
            if not isinstance(prompt, (str, list)):
                raise ValueError(f"{where}: 'prompt' must be text or a list of messages")
            items.append(
                EvalItem(where, prompt, reference, lambda a, r=reference: bool(check(a, r)))
            )
    if not items:
        raise ValueError(f"{', '.join(map(str, paths))}: no records")
    return items


def load_items(
    task: str, n: int, seed: int = 0, verifier: str = "exact", digits: int = 2
) -> list[EvalItem]:
    """A built-in task by name, or a JSONL file path (its first ``n`` records; n ≤ 0: all)."""
    if task in BUILTIN_TASKS:
        return task_items(task, n, seed, digits)
    items = jsonl_items([task], verifier)
    return items[:n] if n > 0 else items
