"""Rule rewards on crafted completions: R1 format, answer accuracy, task verifiers, DAPO
overlong punishment (the latter also against TRL's implementation)."""

from __future__ import annotations

import builtins

import pytest

from lmforge.align.rewards import (
    Reward,
    accuracy_reward,
    extract_answer,
    format_reward,
    soft_overlong_punishment,
    task_reward,
)
from lmforge.data.tasks.arithmetic import ArithmeticProblem
from lmforge.data.tasks.countdown import CountdownProblem


@pytest.mark.parametrize(
    "text,score,why",
    [
        ("<think>7 + 5 is 12</think><answer>12</answer>", 1.0, "well-formed"),
        ("  <think>\nsteps\n</think>\n<answer> 12 </answer>\n", 1.0, "well-formed"),
        ("<think></think><answer></answer>", 1.0, "well-formed"),
        ("<answer>12</answer>", 0.0, "missing <think> </think>"),
        ("<think>x</think>12", 0.0, "missing <answer> </answer>"),
        ("<think>x</think><answer>1</answer><answer>2</answer>", 0.0, "repeated"),
        ("<think>x<think>y</think></think><answer>1</answer>", 0.0, "repeated"),
        ("<think>x<answer>1</answer></think>", 0.0, "out of order"),  # nested
        ("<answer>1</answer><think>x</think>", 0.0, "out of order"),
        ("hi <think>x</think><answer>1</answer>", 0.0, "outside"),
        ("<think>x</think><answer>1</answer> bye", 0.0, "outside"),
        ("<think>x</think><answer>1", 0.0, "missing </answer>"),
    ],
)
def test_format_reward(text, score, why):
    r = format_reward(text)
    assert isinstance(r, Reward) and r.score == score and why in r.reason


def test_extract_answer_takes_the_last_answer():
    assert extract_answer("<answer> 3 </answer> then <answer>4</answer>") == "4"
    assert extract_answer("no tags") is None


@pytest.mark.parametrize(
    "answer,gold,score",
    [
        ("12", "12", 1.0),
        ("0.5", "1/2", 1.0),
        ("1/2", "0.5", 1.0),
        ("\\frac{1}{2}", "0.5", 1.0),
        ("-3.0", "-3", 1.0),
        ("1,234", "1234", 1.0),
        ("13", "12", 0.0),
        ("twelve-ish", "12", 0.0),
        ("", "12", 0.0),
    ],
)
def test_accuracy_reward(answer, gold, score):
    r = accuracy_reward(f"<think>t</think><answer>{answer}</answer>", gold)
    assert r.score == score, r.reason


def test_accuracy_without_tags():
    assert accuracy_reward("12", "12").score == 0.0
    assert accuracy_reward("12", "12", require_tags=False).score == 1.0


def test_numeric_fallback_when_math_verify_is_missing(monkeypatch):
    real_import = builtins.__import__

    def no_math_verify(name, *args, **kwargs):
        if name.startswith("math_verify"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    r = accuracy_reward("<think>t</think><answer>2/4</answer>", "0.5")
    assert r.score == 1.0 and "numeric" in r.reason
    assert accuracy_reward("<think>t</think><answer>0.51</answer>", "1/2").score == 0.0


def test_task_reward_uses_the_task_verifier():
    p = ArithmeticProblem(37, "+", 48)
    assert task_reward("<think>30+40=70, 7+8=15</think><answer>85</answer>", p).score == 1.0
    assert task_reward("<think>x</think><answer>84</answer>", p).score == 0.0
    assert task_reward("<think>x</think><answer>85 or 86</answer>", p).score == 0.0
    assert task_reward("85", p).score == 0.0
    c = CountdownProblem((3, 5, 7), 22, "3 * 5 + 7")
    assert task_reward("<think>x</think><answer>7 + 5 * 3</answer>", c).score == 1.0
    r = task_reward("<think>x</think><answer>7 + 5 + 3</answer>", c)
    assert r.score == 0.0 and "evaluates to 15" in r.reason
    with pytest.raises(TypeError):
        task_reward("<answer>1</answer>", object())


def test_soft_overlong_punishment_matches_dapo_eq13_and_trl():
    assert soft_overlong_punishment(80, 100, 20).score == 0.0
    assert soft_overlong_punishment(90, 100, 20).score == pytest.approx(-0.5)
    assert soft_overlong_punishment(100, 100, 20).score == pytest.approx(-1.0)
    assert soft_overlong_punishment(101, 100, 20).score == -1.0
    other = pytest.importorskip("trl.rewards.other_rewards")
    trl = other.get_soft_overlong_punishment(max_completion_len=50, soft_punish_cache=16)
    lengths = [0, 10, 34, 35, 42, 49, 50, 51, 80]
    want = trl([[1] * n for n in lengths])
    assert [soft_overlong_punishment(n, 50, 16).score for n in lengths] == pytest.approx(want)


def test_math_verify_is_lenient_where_the_task_verifier_is_strict():
    hedge = "<think>x</think><answer>145 or 146</answer>"
    assert accuracy_reward(hedge, "146").score == 1.0  # documented leniency
    assert task_reward(hedge, ArithmeticProblem(100, "+", 46)).score == 0.0
