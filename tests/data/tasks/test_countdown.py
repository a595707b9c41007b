"""Countdown: solvable seeded problems, disjoint split, and a verifier that never evals."""

from __future__ import annotations

from fractions import Fraction

import pytest

from lmforge.data.tasks.countdown import (
    CountdownProblem,
    check_countdown,
    countdown_problems,
    evaluate_expression,
)


def test_generated_problems_are_seeded_solvable_and_in_range():
    ps = countdown_problems(100, seed=1, num_numbers=4, max_number=15, max_target=200)
    assert ps == countdown_problems(100, seed=1, num_numbers=4, max_number=15, max_target=200)
    for p in ps:
        assert len(p.numbers) == 4 and all(1 <= n <= 15 for n in p.numbers)
        assert 1 <= p.target <= 200
        assert check_countdown(p, p.solution)[0], p
        assert str(p.target) in p.prompt


def test_held_out_split_is_disjoint():
    def key(p):
        return tuple(sorted(p.numbers)), p.target

    train = {key(p) for p in countdown_problems(500, seed=0)}
    test = {key(p) for p in countdown_problems(50, seed=0, split="test")}
    assert len(test) == 50 and not train & test


P = CountdownProblem((4, 6, 8, 2), 24, "")


@pytest.mark.parametrize(
    "expr,ok,why",
    [
        ("(8 - 6) * 4 * ... ", False, "invalid"),
        ("4 * 6 * (8 / 8)", False, "numbers used"),
        ("4 * 6 + 8 - 2 * 4", False, "numbers used"),
        ("(8 - 4) * 6 / 2 * 2", False, "numbers used"),
        ("8 * 6 / 2 - 4 * 1", False, "numbers used"),
        ("(6 - 2) * 8 - 4", False, "evaluates to 28"),
        ("6 * 4 * (8 - 2 * 4)", False, "numbers used"),
        ("(8 - 6 + 2) * 4", False, "evaluates to 16"),
        ("4 * (8 - 6 + 2) + 8", False, "numbers used"),
        ("8 * 6 / 2 - 4 * 0 ", False, "numbers used"),
        ("6 * 8 / 4 * 2", True, "correct"),
        ("6×8÷4×2", True, "correct"),
        ("6 * 8 / 4 * 2 = 24", True, "correct"),
        ("6 * 8 / 4 * 2 = 25", False, "target is 24"),
        ("6 ** 2 - 8 - 4 + 2", False, "Pow"),
        ("__import__('os')", False, "Call"),
        ("-4 + 6 * 8 / 2 - 0", False, "UnaryOp"),
        ("6.0 * 8 / 4 * 2", False, "Constant"),
        ("8 / (6 - 6) + 4 + 2", False, "division by zero"),
        ("4 6 8 2", False, "invalid"),
        ("(" * 150 + "4" + ")" * 150, False, "longer"),
    ],
)
def test_check_countdown(expr, ok, why):
    got, reason = check_countdown(P, expr)
    assert got == ok and why in reason, reason


def test_evaluate_expression_is_exact():
    assert evaluate_expression("1 / 3 + 2 / 3") == (Fraction(1), [1, 3, 2, 3])
    assert evaluate_expression("(7 - 2) * (3 + 1)")[0] == 20
