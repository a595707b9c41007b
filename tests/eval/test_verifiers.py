"""lmforge/eval/verifiers.py: answer extraction and every verifier."""

from __future__ import annotations

import pytest

from lmforge.eval.verifiers import extract_answer, get_verifier


def same_last_word(response: str, reference: str) -> bool:
    """A user verifier (imported by name in the test below)."""
    return response.split()[-1:] == [reference]


def test_extract_answer_takes_the_last_answer_tag_else_the_whole_response():
    assert extract_answer("<think>x</think><answer> 42 </answer>") == "42"
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert extract_answer("  just 7 \n") == "just 7"


def test_exact():
    check = get_verifier("exact")
    assert check(" Paris  is  big", "Paris is big") and not check("paris", "Paris")


def test_numeric():
    check = get_verifier("numeric")
    assert check("1/2", "0.5") and check("1,234", "1234") and check("-3.", "-3")
    assert not check("3 apples", "3") and not check("4", "3")


def test_math_verify():
    check = get_verifier("math-verify")
    assert check("\\frac{1}{2}", "0.5") and check("$x^2+2x+1$", "$(x+1)^2$")
    assert check("$\\sqrt{4}$", "2")
    assert not check("3", "4")


def test_regex():
    check = get_verifier("regex")
    assert check("The answer is 42", r"The answer is \d+") and not check("42!", r"\d+")
    with pytest.raises(ValueError, match="bad pattern"):
        check("x", "(")


def test_module_function_and_bad_names():
    check = get_verifier(f"{__name__}:same_last_word")
    assert check("so it is 9", "9") and not check("9 it is", "9")
    with pytest.raises(ValueError, match="unknown verifier 'fuzzy'"):
        get_verifier("fuzzy")
    with pytest.raises(ValueError, match="no function 'nope'"):
        get_verifier(f"{__name__}:nope")
    with pytest.raises(ValueError, match="cannot import"):
        get_verifier("no_such_module_xyz:f")
