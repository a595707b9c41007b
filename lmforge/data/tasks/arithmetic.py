"""Multi-digit arithmetic problems with exact answers, seeded, with a held-out split.

    >>> problems = arithmetic_problems(3, seed=0, digits=2)
    >>> problems[0].prompt, problems[0].answer           # doctest: +SKIP
    ('What is 49 + 97?', '146')
    >>> check_arithmetic(problems[0], "146")             # doctest: +SKIP
    (True, 'correct: 146')

Splits are decided by a hash of the question text, not by the seed: a question is in "test"
(about ``test_fraction`` of all questions) or in "train", for every seed and every call, so a
model trained on any number of train problems never sees a test question. `parse_number` is
the shared, strict reader of a numeric answer (integers, decimals, fractions ``a/b``).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "ArithmeticProblem",
    "SPLITS",
    "arithmetic_problems",
    "check_arithmetic",
    "parse_number",
    "split_of",
]

SPLITS = ("train", "test")
OPS = ("+", "-", "*")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def split_of(key: str, test_fraction: float = 0.1) -> str:
    """ "test" for a stable ``test_fraction`` of keys (by SHA-256), else "train"."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "test" if h / 2**64 < test_fraction else "train"


def parse_number(text: str) -> Fraction | None:
    """The exact value of ``text`` if it is one number: ``42``, ``-3``, ``0.5``, ``1/2``,
    ``1,234`` (thousands separators), optionally followed by a period; else None."""
    s = text.strip().rstrip(".").strip().replace(",", "").replace(" ", "")
    if not s:
        return None
    if s.count("/") == 1:
        num, den = s.split("/")
        if not (_NUMBER.match(num) and _NUMBER.match(den)):
            return None
        den_value = Fraction(den)
        return None if den_value == 0 else Fraction(num) / den_value
    return Fraction(s) if _NUMBER.match(s) else None


@dataclass(frozen=True)
class ArithmeticProblem:
    """``a op b`` with non-negative integer operands; ``answer`` is the exact result."""

    a: int
    op: str
    b: int

    @property
    def question(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def prompt(self) -> str:
        return f"What is {self.question}?"

    @property
    def value(self) -> int:
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        return self.a * self.b

    @property
    def answer(self) -> str:
        return str(self.value)


def arithmetic_problems(
    n: int,
    seed: int = 0,
    split: str = "train",
    digits: int = 2,
    ops: tuple[str, ...] = ("+", "-"),
    test_fraction: float = 0.1,
) -> list[ArithmeticProblem]:
    """``n`` distinct problems of ``split`` with ``digits``-digit operands (subtraction keeps
    ``a ≥ b`` so answers are ≥ 0), identical for identical arguments."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {', '.join(SPLITS)}")
    if digits < 1:
        raise ValueError(f"digits={digits} must be ≥ 1")
    if not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops={ops!r}: choose from {', '.join(OPS)}")
    rng = random.Random(f"arithmetic-{seed}-{split}-{digits}")
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    out: list[ArithmeticProblem] = []
    seen: set[ArithmeticProblem] = set()
    for _ in range(50 * n + 1000):
        if len(out) == n:
            break
        a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(ops)
        if op == "-" and a < b:
            a, b = b, a
        problem = ArithmeticProblem(a, op, b)
        if problem in seen or split_of(problem.question, test_fraction) != split:
            continue
        seen.add(problem)
        out.append(problem)
    if len(out) < n:
        raise ValueError(
            f"only {len(out)} distinct {split} problems found with digits={digits}, ops={ops}; "
            f"ask for fewer than {n}"
        )
    return out


def check_arithmetic(problem: ArithmeticProblem, answer: str) -> tuple[bool, str]:
    """Whether ``answer`` is one number equal to the problem's result, and why."""
    value = parse_number(answer)
    if value is None:
        return False, f"not a number: {answer.strip()[:40]!r}"
    if value == problem.value:
        return True, f"correct: {problem.answer}"
    return False, f"wrong: {answer.strip()[:40]} ≠ {problem.answer}"
