"""Countdown: reach a target by combining given numbers with + − × ÷, each used exactly once.

    >>> p = countdown_problems(1, seed=0)[0]
    >>> p.prompt                                            # doctest: +SKIP
    'Using the numbers 3, 7, 12, 25, make 88. Use each number exactly once, with + - * / ...'
    >>> check_countdown(p, "(25 - 3) * (12 - 7 - 1)")       # doctest: +SKIP
    (False, 'numbers used [1, 3, 7, 12, 25], expected [3, 7, 12, 25]')

Every generated problem is solvable: the target is the value of a random expression over the
numbers (kept in ``solution``). The held-out split is decided by a hash of the sorted numbers
and the target (`lmforge.data.tasks.arithmetic.split_of`).

`check_countdown` never evaluates text as code: it parses the expression with `ast`, accepts
only integer literals, the four binary operators and parentheses, checks the multiset of
literals against the given numbers, and evaluates exactly with `fractions.Fraction`.
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from lmforge.data.tasks.arithmetic import SPLITS, split_of

__all__ = ["CountdownProblem", "check_countdown", "countdown_problems", "evaluate_expression"]

MAX_EXPRESSION_CHARS = 200
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@dataclass(frozen=True)
class CountdownProblem:
    """``numbers`` to combine into ``target``; ``solution`` is one expression that does."""

    numbers: tuple[int, ...]
    target: int
    solution: str

    @property
    def prompt(self) -> str:
        nums = ", ".join(str(n) for n in self.numbers)
        return (
            f"Using the numbers {nums}, make {self.target}. Use each number exactly once, "
            "with + - * / and parentheses."
        )

    @property
    def answer(self) -> str:
        return self.solution


def countdown_problems(
    n: int,
    seed: int = 0,
    split: str = "train",
    num_numbers: int = 3,
    max_number: int = 20,
    max_target: int = 100,
    test_fraction: float = 0.1,
) -> list[CountdownProblem]:
    """``n`` distinct solvable problems of ``split``: ``num_numbers`` numbers in
    ``[1, max_number]`` and a target in ``[1, max_target]``; identical for identical arguments."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {', '.join(SPLITS)}")
    if num_numbers < 2 or max_number < 1 or max_target < 1:
        raise ValueError("need num_numbers ≥ 2, max_number ≥ 1 and max_target ≥ 1")
    rng = random.Random(f"countdown-{seed}-{split}-{num_numbers}-{max_number}-{max_target}")
    out: list[CountdownProblem] = []
    seen: set[tuple] = set()
    for _ in range(200 * n + 1000):
        if len(out) == n:
            break
        numbers = [rng.randint(1, max_number) for _ in range(num_numbers)]
        built = _random_expression(rng, numbers)
        if built is None:
            continue
        value, expression = built
        key = (tuple(sorted(numbers)), value)
        if not 1 <= value <= max_target or key in seen:
            continue
        if split_of(f"{key[0]}->{value}", test_fraction) != split:
            continue
        seen.add(key)
        out.append(CountdownProblem(tuple(numbers), value, expression))
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct {split} countdown problems found; ask fewer")
    return out


def _random_expression(rng: random.Random, numbers: list[int]) -> tuple[int, str] | None:
    """Combine random pairs until one value is left; positive integer intermediates only."""
    items = [(n, str(n)) for n in numbers]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        (a, ea), (b, eb) = items[i], items[j]
        if a < b:
            (a, ea), (b, eb) = (b, eb), (a, ea)
        op = rng.choice("+-*/")
        if op == "-" and a == b or op == "/" and a % b:
            op = rng.choice("+*")
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        items = [x for k, x in enumerate(items) if k not in (i, j)] + [(value, f"({ea} {op} {eb})")]
    value, expression = items[0]
    expression = expression[1:-1] if expression.startswith("(") else expression
    return value, expression


def evaluate_expression(text: str) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the integer literals it uses.

    Accepts integer literals, ``+ - * /`` (also ``× ÷ −``) and parentheses; anything else —
    names, calls, unary signs, floats, powers — raises ValueError with the reason, as does a
    division by zero or a syntax error.
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    source = text.replace("×", "*").replace("÷", "/").replace("−", "-").strip()
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an expression: {e.msg}") from None
    literals: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if right == 0:
                raise ValueError("division by zero")
            return left / right
        what = type(node.op if isinstance(node, ast.BinOp) else node).__name__
        raise ValueError(f"not allowed in an expression: {what}")

    return walk(tree.body), literals


def check_countdown(problem: CountdownProblem, expression: str) -> tuple[bool, str]:
    """Whether ``expression`` uses exactly the problem's numbers (each once), only
    ``+ − × ÷``, and equals the target; and why. A trailing ``= <target>`` is allowed."""
    text = expression.strip()
    if "=" in text:
        text, _, rhs = text.rpartition("=")
        if rhs.strip() != str(problem.target):
            return False, f"states = {rhs.strip()[:20]}, target is {problem.target}"
    try:
        value, used = evaluate_expression(text)
    except ValueError as e:
        return False, f"invalid expression: {e}"
    if Counter(used) != Counter(problem.numbers):
        return False, f"numbers used {sorted(used)}, expected {sorted(problem.numbers)}"
    if value != problem.target:
        return False, f"evaluates to {value}, target is {problem.target}"
    return True, f"correct: {text.strip()} = {problem.target}"
