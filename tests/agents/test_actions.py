"""The action language: parse ∘ format is the identity over random actions, the canonical
text is what the docs say, and every malformed text is refused with the column and what was
expected there."""

from __future__ import annotations

import random
import string

import pytest

from lmforge.agents.actions import (
    KEYS,
    MAX_CONTENT,
    MAX_THOUGHT,
    SCROLL_DIRECTIONS,
    ActionParseError,
    AgentResponse,
    CallUser,
    Click,
    Drag,
    Finished,
    Hotkey,
    LeftDouble,
    RightSingle,
    Scroll,
    Type,
    Wait,
    action_point,
    format_action,
    format_response,
    parse_action,
    parse_response,
    response_thought,
)

PRINTABLE = "".join(chr(c) for c in range(32, 127))


def random_text(rng: random.Random, n: int) -> str:
    # quotes and backslashes are common on purpose: they are the escaping edge cases
    return "".join(rng.choice(PRINTABLE + "'\\'\\") for _ in range(rng.randint(0, n)))


def random_action(rng: random.Random, w: int = 128, h: int = 128):
    x, y = rng.randrange(w), rng.randrange(h)
    return rng.choice([
        lambda: Click(x, y), lambda: LeftDouble(x, y), lambda: RightSingle(x, y),
        lambda: Drag(x, y, rng.randrange(w), rng.randrange(h)),
        lambda: Type(random_text(rng, MAX_CONTENT)),
        lambda: Hotkey(tuple(rng.choice(KEYS) for _ in range(rng.randint(1, 3)))),
        lambda: Scroll(x, y, rng.choice(SCROLL_DIRECTIONS)), lambda: Wait(),
        lambda: Finished(random_text(rng, MAX_CONTENT)), lambda: CallUser(),
    ])()  # fmt: skip


def test_round_trip_over_random_actions_and_responses():
    rng = random.Random(0)
    for _ in range(2000):
        a = random_action(rng)
        text = format_action(a)
        assert parse_action(text, (128, 128)) == a
        assert format_action(parse_action(text)) == text
        thought = "".join(rng.choice(PRINTABLE) for _ in range(rng.randint(1, MAX_THOUGHT)))
        r = format_response(thought, a)
        assert parse_response(r, (128, 128)) == AgentResponse(thought, a)


@pytest.mark.parametrize(
    "action, text",
    [
        (Click(3, 40), "click(3,40)"),
        (LeftDouble(0, 0), "left_double(0,0)"),
        (RightSingle(127, 5), "right_single(127,5)"),
        (Drag(1, 2, 30, 40), "drag(1,2,30,40)"),
        (Type("it's a \\ test"), r"type('it\'s a \\ test')"),
        (Hotkey(("ctrl", "a")), "hotkey('ctrl a')"),
        (Scroll(10, 20, "down"), "scroll(10,20,down)"),
        (Wait(), "wait()"),
        (Finished(""), "finished('')"),
        (CallUser(), "call_user()"),
    ],
)
def test_canonical_text(action, text):
    assert format_action(action) == text
    assert parse_action(text) == action


@pytest.mark.parametrize(
    "text, column, expected",
    [
        ("tap(1,2)", 1, "an action name"),
        ("click(1, 2)", 9, "an integer y"),
        ("click(01,2)", 8, "','"),
        ("click(1,2", 10, "')'"),
        ("click(1,2) ", 11, "the end of the action"),
        ("click(-1,2)", 7, "an integer x"),
        ("click(200,2)", 7, "x < 128"),
        ("click(2,128)", 9, "y < 128"),
        ("type(hello)", 6, '"\'"'),
        ("type('abc", 10, "a closing quote"),
        ("type('a\\b')", 8, "after a backslash"),
        ("type('" + "x" * (MAX_CONTENT + 1) + "')", 7 + MAX_CONTENT, f"at most {MAX_CONTENT}"),
        ("type('\tx')", 7, "printable ASCII"),
        ("hotkey('ctrl  a')", 8, "key names"),
        ("hotkey('win')", 8, "key names"),
        ("hotkey('a b c d')", 8, "key names"),
        ("scroll(1,2,sideways)", 12, "a scroll direction"),
        ("wait(1)", 6, "')'"),
    ],
)
def test_parse_errors_name_column_and_expectation(text, column, expected):
    with pytest.raises(ActionParseError) as info:
        parse_action(text, (128, 128))
    assert info.value.column + 1 == column, str(info.value)
    assert expected in str(info.value)
    assert f"column {column}" in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Action: click(1,2)", "'Thought: '"),
        ("Thought: hi", "'\\nAction: '"),
        ("Thought: \nAction: click(1,2)", "a thought of 1-"),
        ("Thought: " + "x" * (MAX_THOUGHT + 1) + "\nAction: click(1,2)", "a thought of 1-"),
        ("Thought: ok\nAction click(1,2)", "'\\nAction: '"),
        ("Thought: ok\nAction: click(1,2)\n", "the end of the action"),
    ],
)
def test_response_errors(text, expected):
    with pytest.raises(ActionParseError, match="column") as info:
        parse_response(text)
    assert expected in str(info.value)


def test_error_column_points_into_the_full_response():
    text = "Thought: ok\nAction: click(1,x)"
    with pytest.raises(ActionParseError) as info:
        parse_response(text)
    assert text[info.value.column] == "x"


def test_formatter_refuses_what_the_parser_would():
    for bad in (Type("x" * (MAX_CONTENT + 1)), Hotkey(("cmd",)), Scroll(1, 2, "in"), Click(-1, 0)):
        with pytest.raises(ActionParseError):
            format_action(bad)
    with pytest.raises(TypeError, match="not an action"):
        format_action("click(1,2)")
    with pytest.raises(ActionParseError):
        format_response("two\nlines", Wait())


def test_action_point():
    assert action_point(Click(1, 2)) == (1, 2)
    assert action_point(Drag(5, 6, 7, 8)) == (5, 6)
    assert action_point(Scroll(3, 4, "up")) == (3, 4)
    assert action_point(Type("a")) is None and action_point(Wait()) is None


def test_random_garbage_never_crashes_the_parser():
    rng = random.Random(1)
    alphabet = string.ascii_lowercase + "(),'_ 0123456789\\"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        try:
            a = parse_action(text)
        except ActionParseError:
            continue
        assert format_action(a) == text  # accepted text is always canonical


def test_response_thought_reads_leniently():
    assert response_thought("Thought: I open it.\nAction: click(1,2)") == "I open it."
    assert response_thought("Thought: no action yet") == "no action yet"  # cut off: still read
    assert response_thought("Thought:  spaced \t\nAction: wait()") == "spaced"
    assert response_thought("Action: click(1,2)") == response_thought("") == ""
    assert len(response_thought("Thought: " + "a" * 300)) == MAX_THOUGHT
