"""The action grammar: its integer ranges against brute force, its language equal to the
parser's (on valid texts and their mutations), and — the point of it — a random model
sampling through the real engine under the grammar only ever writes parseable responses.
Typing held to the instruction: its spans, a grammar that admits exactly those contents
(quotes and backslashes escaped as the parser reads them), and engine samples within them."""

from __future__ import annotations

import random
import re

import pytest
import torch

import lmforge
from lmforge.agents.action_grammar import (
    action_regex,
    instruction_spans,
    int_range_regex,
    response_regex,
    string_choice_regex,
)
from lmforge.agents.actions import (
    MAX_CONTENT,
    ActionParseError,
    Click,
    Finished,
    Type,
    format_action,
    format_response,
    parse_action,
    parse_response,
)
from lmforge.infer import Engine, SamplingParams
from lmforge.infer.structured import compile_constraint
from lmforge.models.presets import preset_config
from lmforge.tokenizer import Tokenizer

from .test_actions import random_action

SCREEN = (128, 96)


@pytest.mark.parametrize("n", [1, 2, 9, 10, 11, 96, 100, 101, 128, 999, 1000, 1234])
def test_int_range_regex_matches_exactly_0_to_n_minus_1(n):
    pattern = re.compile(int_range_regex(n))
    accepted = {k for k in range(3 * n + 20) if pattern.fullmatch(str(k))}
    assert accepted == set(range(n))
    assert not pattern.fullmatch("01") and not pattern.fullmatch("-1") and not pattern.fullmatch("")


def test_int_range_regex_refuses_empty_range():
    with pytest.raises(ValueError, match="empty coordinate range"):
        int_range_regex(0)


def mutations(text: str, rng: random.Random) -> list[str]:
    alphabet = "(),'_ 0123456789\\abcdkyz\n"
    out = []
    for _ in range(6):
        i = rng.randrange(len(text) + 1)
        c = rng.choice(alphabet)
        out += [text[:i] + c + text[i:], text[:i] + text[i + 1 :], text[:i] + c + text[i + 1 :]]
    return out


def test_regex_language_equals_parser_language():
    rng = random.Random(0)
    action_re = re.compile(action_regex(SCREEN))
    response_re = re.compile(response_regex(SCREEN))
    for _ in range(300):
        a = random_action(rng, *SCREEN)
        response = format_response("I act " + str(rng.random())[:8], a)
        for text, pattern, parse in (
            (format_action(a), action_re, parse_action),
            (response, response_re, parse_response),
        ):
            for t in [text, *mutations(text, rng)]:
                try:
                    parse(t, SCREEN)
                    ok = True
                except ActionParseError:
                    ok = False
                assert bool(pattern.fullmatch(t)) == ok, t


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(1)
    texts = [format_response("I click the box to tick it.", random_action(rng, *SCREEN))
             for _ in range(400)]  # fmt: skip
    return Tokenizer.train(texts, vocab_size=400)


def test_constrained_sampling_through_the_engine_only_emits_parseable_responses(tok):
    config = preset_config("tiny", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                           max_position_embeddings=512)  # fmt: skip
    torch.manual_seed(0)
    model = lmforge.CausalLM(config).eval()
    engine = Engine(model, tok)
    prompt = tok.encode("Task: tick the box\n")
    regex = response_regex(SCREEN)
    n = 24
    params = [SamplingParams(max_tokens=300, temperature=1.0, seed=i,
                             constraint=compile_constraint(tok, regex=regex)) for i in range(n)]  # fmt: skip
    outs = engine.generate([prompt] * n, params)
    kinds = set()
    for out in outs:
        assert out.finish_reason == "stop", (out.finish_reason, out.text)
        response = parse_response(out.text, SCREEN)  # raises if not in the language
        kinds.add(type(response.action).__name__)
    assert len(kinds) >= 3  # the random model explores the action space, not one action
    # unconstrained, the same model writes text the parser refuses
    free = engine.generate(
        [prompt] * 4, SamplingParams(max_tokens=40, temperature=1.0, seed=0, n=4)
    )
    for out in free:
        with pytest.raises(ActionParseError):
            parse_response(out.text, SCREEN)


def test_instruction_spans_are_its_quoted_spans_and_words():
    spans = instruction_spans("Sign in as carol with 'Remember me' ticked")
    assert {"carol", "Remember me", "Remember", "me", "Sign", "ticked"} <= set(spans)
    assert not any("'" in s for s in spans)
    assert set(instruction_spans("Set Size to Medium, then press OK.")) == {
        "Set", "Size", "to", "Medium", "then", "press", "OK"}  # fmt: skip
    long = "x" * (MAX_CONTENT + 1)
    assert instruction_spans(f"Search for '{long}'") == ["Search", "for"]
    assert instruction_spans("   ") == []


@pytest.mark.parametrize(
    "typed", [["carol"], ["Remember me", "carol", "in"], ["it's", "a\\b", "x.y*"]]
)
def test_typed_grammar_admits_exactly_the_given_contents(typed):
    regex = response_regex(SCREEN, typed)
    for content in typed:  # each span, written as the parser reads it, round-trips
        text = format_response("I type it.", Type(content))
        assert re.fullmatch(regex, text), text
        assert parse_response(text, SCREEN).action == Type(content)
    others = ["", "caro", "carol ", "alice", "Remember", "it", "a\\\\b", "xzy*"]
    for content in (c for c in others if c not in typed):
        assert not re.fullmatch(regex, format_response("I type it.", Type(content))), content
    # the other actions are as before: finished() still writes any string
    for action in (Click(3, 4), Finished("all done, alice")):
        assert re.fullmatch(regex, format_response("ok", action))
    empty = response_regex(SCREEN, [])
    assert not re.fullmatch(empty, format_response("t", Type("carol")))
    assert re.fullmatch(empty, format_response("t", Click(3, 4)))
    with pytest.raises(ValueError, match="no string"):
        string_choice_regex([])


def test_engine_samples_under_the_typed_grammar_stay_within_the_spans(tok):
    config = preset_config("tiny", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                           max_position_embeddings=512)  # fmt: skip
    torch.manual_seed(0)
    engine = Engine(lmforge.CausalLM(config).eval(), tok)
    spans = instruction_spans("Sign in as carol with 'Remember me' ticked")
    regex = r"Thought: I type\.\nAction: type\(" + string_choice_regex(spans) + r"\)"
    n = 16
    params = [SamplingParams(max_tokens=120, temperature=1.0, seed=i,
                             constraint=compile_constraint(tok, regex=regex)) for i in range(n)]  # fmt: skip
    contents = set()
    for out in engine.generate([tok.encode("Task: sign in\n")] * n, params):
        action = parse_response(out.text, SCREEN).action
        assert isinstance(action, Type) and action.content in spans, out.text
        contents.add(action.content)
    assert len(contents) >= 3  # the random model chooses among the spans, not one forced text
