"""Rule-based rewards for reasoning RL (DeepSeek-R1, DAPO, Kimi k1.5). Each returns a
`Reward`: a float score and a short reason for logging.

- `format_reward`: DeepSeek-R1-Zero's format reward (Guo et al. 2025, §2.2.2): the completion is
  exactly ``<think>…</think>`` then ``<answer>…</answer>`` (whitespace allowed around and
  between), each tag once, no tag nested inside another's content. 1 or 0.
- `accuracy_reward`: the ``<answer>`` content against the ground truth, through ``math_verify``
  (imported lazily; it parses LaTeX and plain expressions and compares symbolically) with an
  exact numeric fallback (`parse_number`: integers, decimals, fractions) used when
  math_verify is missing, raises, or says no. 1 or 0.
- `task_reward`: the ``<answer>`` content checked by a synthetic task's verifier
  (`check_arithmetic`, `check_countdown`). 1 or 0.
- `soft_overlong_punishment`: DAPO's length penalty (Yu et al. 2025, eq. 13): 0 up to
  ``L_max − L_cache`` tokens, then linearly down to −1 at ``L_max``, −1 beyond.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from lmforge.data.tasks.arithmetic import ArithmeticProblem, check_arithmetic, parse_number
from lmforge.data.tasks.countdown import CountdownProblem, check_countdown

__all__ = [
    "Reward",
    "accuracy_reward",
    "extract_answer",
    "format_reward",
    "soft_overlong_punishment",
    "task_reward",
]

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_R1_FORMAT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class Reward(NamedTuple):
    """A reward value and why it was given (for logs and sample tables)."""

    score: float
    reason: str


def format_reward(completion: str) -> Reward:
    """1.0 if ``completion`` is ``<think>…</think><answer>…</answer>`` exactly, else 0.0."""
    counts = {tag: completion.count(tag) for tag in _TAGS}
    missing = [tag for tag, c in counts.items() if c == 0]
    if missing:
        return Reward(0.0, f"missing {' '.join(missing)}")
    repeated = [tag for tag, c in counts.items() if c > 1]
    if repeated:
        return Reward(0.0, f"repeated {' '.join(repeated)}")
    if not _R1_FORMAT.fullmatch(completion):
        return Reward(0.0, "tags out of order or text outside them")
    return Reward(1.0, "well-formed")


def extract_answer(completion: str) -> str | None:
    """The content of the last ``<answer>…</answer>`` (stripped), or None."""
    found = _ANSWER.findall(completion)
    return found[-1].strip() if found else None


def _math_verify_equal(answer: str, ground_truth: str) -> bool | None:
    """math_verify's verdict, or None when it is not installed or fails."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    try:
        gold, pred = parse(ground_truth), parse(answer)
        if not gold or not pred:
            return None
        return bool(verify(gold, pred))
    except Exception:  # noqa: BLE001 - any parser failure means "no verdict", not a crash
        return None


def accuracy_reward(completion: str, ground_truth: str, require_tags: bool = True) -> Reward:
    """1.0 if the answer equals ``ground_truth`` (math_verify, then exact numeric), else 0.0.

    The answer is the ``<answer>`` content; without tags it is 0 unless ``require_tags`` is
    False, in which case the whole completion is the answer. math_verify extracts an answer
    from free text, so it is lenient (it accepts "145 or 146" for 146); for RL on the
    synthetic tasks prefer the strict `task_reward`, which a policy cannot game that way.
    """
    answer = extract_answer(completion)
    if answer is None:
        if require_tags:
            return Reward(0.0, "no <answer>")
        answer = completion.strip()
    if not answer:
        return Reward(0.0, "empty answer")
    if _math_verify_equal(answer, ground_truth):
        return Reward(1.0, f"correct (math_verify): {answer[:40]}")
    mine, gold = parse_number(answer), parse_number(ground_truth)
    if mine is not None and gold is not None and mine == gold:
        return Reward(1.0, f"correct (numeric): {answer[:40]}")
    return Reward(0.0, f"wrong: {answer[:40]!r} vs {ground_truth[:40]!r}")


def task_reward(
    completion: str, problem: ArithmeticProblem | CountdownProblem, require_tags: bool = True
) -> Reward:
    """1.0 if the ``<answer>`` content solves a synthetic task's ``problem``, else 0.0."""
    answer = extract_answer(completion)
    if answer is None:
        if require_tags:
            return Reward(0.0, "no <answer>")
        answer = completion.strip()
    if isinstance(problem, ArithmeticProblem):
        ok, reason = check_arithmetic(problem, answer)
    elif isinstance(problem, CountdownProblem):
        ok, reason = check_countdown(problem, answer)
    else:
        raise TypeError(f"no verifier for {type(problem).__name__}")
    return Reward(1.0 if ok else 0.0, reason)


def soft_overlong_punishment(length: int, max_length: int, cache_length: int) -> Reward:
    """DAPO's soft overlong punishment (eq. 13) for a completion of ``length`` tokens."""
    if not 0 <= cache_length <= max_length:
        raise ValueError(f"need 0 ≤ cache_length={cache_length} ≤ max_length={max_length}")
    start = max_length - cache_length
    if length <= start:
        return Reward(0.0, f"length {length} ≤ {start}")
    if length <= max_length:
        return Reward((start - length) / cache_length, f"length {length} in the soft zone")
    return Reward(-1.0, f"length {length} > {max_length}")
