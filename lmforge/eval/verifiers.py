"""Verifiers: does a model's answer match a reference? Each is ``check(response, reference)
-> bool`` on the *extracted* answer (`extract_answer`: the last ``<answer>…</answer>`` when
the response has one, else the whole response).

| name | a response is correct when |
|---|---|
| ``exact`` | it equals the reference after trimming and collapsing whitespace |
| ``numeric`` | both are one number (integer, decimal, ``a/b``, ``1,234``) of equal value |
| ``math-verify`` | ``math_verify`` parses both and finds them equal (symbolic, LaTeX) |
| ``regex`` | it matches the reference, read as a regular expression, in full |
| ``module:function`` | ``function(response, reference)`` (imported) returns true |
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from lmforge.data.tasks.arithmetic import parse_number

__all__ = [
    "VERIFIERS",
    "Verifier",
    "exact_match",
    "extract_answer",
    "get_verifier",
    "math_verify_match",
    "normalize_answer",
    "numeric_match",
    "regex_match",
]

Verifier = Callable[[str, str], bool]
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(response: str) -> str:
    """The content of the last ``<answer>…</answer>`` of ``response`` (DeepSeek-R1's format)
    if it has one, else the whole response; stripped."""
    found = _ANSWER_TAG.findall(response)
    return (found[-1] if found else response).strip()


def normalize_answer(text: str) -> str:
    """``text`` trimmed with every run of whitespace made one space (for voting, ``exact``)."""
    return " ".join(text.split())


def exact_match(response: str, reference: str) -> bool:
    """Equal after `normalize_answer`."""
    return normalize_answer(response) == normalize_answer(reference)


def numeric_match(response: str, reference: str) -> bool:
    """Both one number (`lmforge.data.tasks.arithmetic.parse_number`) of exactly equal value."""
    mine, gold = parse_number(response), parse_number(reference)
    return mine is not None and gold is not None and mine == gold


def math_verify_match(response: str, reference: str) -> bool:
    """``math_verify.verify(parse(reference), parse(response))`` (Hugging Face's Math-Verify:
    LaTeX and plain expressions compared symbolically); False when either does not parse."""
    try:
        from math_verify import parse, verify
    except ImportError as exc:
        raise RuntimeError(
            "the math-verify verifier needs the math-verify package: pip install math-verify"
        ) from exc
    try:
        gold, pred = parse(reference), parse(response)
        return bool(gold and pred and verify(gold, pred))
    except Exception:  # noqa: BLE001 - a parser failure is a wrong answer, not a crash
        return False


def regex_match(response: str, reference: str) -> bool:
    """``re.fullmatch(reference, response)`` (after trimming the response)."""
    try:
        return re.fullmatch(reference, response.strip(), re.DOTALL) is not None
    except re.error as exc:
        raise ValueError(f"regex verifier: bad pattern {reference!r} ({exc})") from exc


VERIFIERS: dict[str, Verifier] = {
    "exact": exact_match,
    "numeric": numeric_match,
    "math-verify": math_verify_match,
    "regex": regex_match,
}


def get_verifier(spec: str) -> Verifier:
    """The verifier named ``spec`` (a key of `VERIFIERS`) or the function ``module:function``
    (imported; it is called as ``function(response, reference)``)."""
    if spec in VERIFIERS:
        return VERIFIERS[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"unknown verifier {spec!r}: choose {', '.join(VERIFIERS)} or module:function"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"verifier {spec!r}: cannot import {module_name!r} ({exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"verifier {spec!r}: {module_name} has no function {attr!r}")
    return fn
