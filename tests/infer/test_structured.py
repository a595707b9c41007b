"""Grammar-constrained decoding: every output of a random model under a constraint is valid.

A tiny random lmforge model samples at temperature 1 (several seeds) under JSON Schema, regex
and EBNF constraints, through both backends; outputs must parse and validate with
`jsonschema`, fullmatch the regex, or pass a hand-written recursive-descent parser — and must
have completed (`is_finished`), not been cut off. Masks are compared against the vocabulary
and between the two independent engines.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

import lmforge
from lmforge.data.tasks.corpus import synthetic_corpus
from lmforge.infer.structured import Constraint, compile_constraint, constrained_generate
from lmforge.infer.structured_backends import BACKENDS, JSON_SEPARATORS, compiled_grammars
from lmforge.infer.structured_spec import close_json_schema
from lmforge.models.presets import preset_config
from lmforge.tokenizer import Tokenizer

SEEDS = (0, 1, 2)
MODEL_VOCAB = 768  # > the tokenizer's vocabulary: the padded ids must be masked


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(synthetic_corpus(2000, seed=0), vocab_size=1024)


@pytest.fixture(scope="module")
def model(tok):
    assert tok.vocab_size < MODEL_VOCAB
    config = preset_config(
        "tiny", vocab_size=MODEL_VOCAB, hidden_size=32, intermediate_size=64,
        max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    return lmforge.CausalLM(config).eval()


def _digit_range(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


SCHEMAS = {
    "nested_object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "address": {
                "type": "object",
                "properties": {
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    "city": {"enum": ["Paris", "Oslo", "Lima"]},
                },
                "required": ["zip", "city"],
            },
        },
        "required": ["name", "address"],
    },
    "array_min_max_items": {
        "type": "array",
        "items": _digit_range(-5, 5),
        "minItems": 2,
        "maxItems": 4,
    },
    "numbers_with_ranges": {
        "type": "object",
        "properties": {
            "x": {"type": "number", "minimum": 0, "maximum": 1},
            "n": {"type": "integer", "exclusiveMinimum": 10, "maximum": 20},
            "t": {"type": "number", "minimum": -2.5, "maximum": 2.5},
        },
        "required": ["x", "n", "t"],
    },
    "optional_bool_null": {
        "type": "object",
        "properties": {
            "flag": {"type": "boolean"},
            "note": {"type": ["string", "null"], "maxLength": 5},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
            "nothing": {"type": "null"},
        },
        "required": ["flag"],
    },
    "string_patterns": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2,3}$"},
            "word": {"type": "string", "minLength": 2, "maxLength": 4},
            "hex": {"type": "string", "pattern": "^0x[0-9a-f]{1,4}$"},
        },
        "required": ["code", "word", "hex"],
    },
    "any_of": {
        "anyOf": [
            _digit_range(0, 9),
            {"type": "object", "properties": {"k": {"const": "v"}}, "required": ["k"]},
        ]
    },
    "refs_array_of_objects": {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": _digit_range(0, 9), "y": _digit_range(0, 9)},
                "required": ["x", "y"],
            }
        },
        "type": "object",
        "properties": {
            "points": {
                "type": "array",
                "items": {"$ref": "#/$defs/point"},
                "minItems": 1,
                "maxItems": 3,
            },
        },  # fmt: skip
        "required": ["points"],
    },
    "top_level_enum": {"enum": ["red", 1, None, True]},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_outputs_validate(tok, model, backend, name):
    schema = SCHEMAS[name]
    texts = set()
    for seed in SEEDS:
        c = compile_constraint(tok, json_schema=schema, backend=backend)
        ids = constrained_generate(model, tok, [0, 11, 12], c, max_tokens=200, seed=seed)
        text = tok.decode(ids)
        assert c.is_finished(), f"seed {seed}: did not complete: {text!r}"
        jsonschema.validate(json.loads(text), schema)
        texts.add(text)
    assert len(texts) > 1 or name == "top_level_enum"  # sampling really varies


REGEXES = [
    r"[a-c]{2,4}-[0-9]{3}",
    r"(yes|no|maybe)",
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    r"(\+|-)?[1-9][0-9]{0,3}(\.[0-9]{1,2})?",
    r"[A-Z][a-z]{1,6}( [A-Z][a-z]{1,6})?",
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_outputs_fullmatch(tok, model, backend, pattern):
    for seed in SEEDS:
        c = compile_constraint(tok, regex=pattern, backend=backend)
        ids = constrained_generate(model, tok, [0], c, max_tokens=40, seed=seed)
        text = tok.decode(ids)
        assert c.is_finished(), f"seed {seed}: did not complete: {text!r}"
        assert re.fullmatch(pattern, text), f"seed {seed}: {text!r} !~ {pattern}"


# A small expression language (GBNF), and an independent recursive-descent parser for it.
EBNF = r"""
root ::= stmt (";" stmt){0,2}
stmt ::= name "=" expr
expr ::= term (("+" | "*") term){0,2}
term ::= num | name | "(" num ("+" | "*") num ")"
name ::= [a-z] [a-z0-9]?
num ::= [1-9] [0-9]?
"""


def _parse_program(text: str) -> bool:
    """True iff ``text`` is in the language of `EBNF` (written without regexes)."""
    pos = 0

    def take(chars: str) -> bool:
        nonlocal pos
        if pos < len(text) and text[pos] in chars:
            pos += 1
            return True
        return False

    def name() -> bool:
        if not take("abcdefghijklmnopqrstuvwxyz"):
            return False
        take("abcdefghijklmnopqrstuvwxyz0123456789")
        return True

    def num() -> bool:
        if not take("123456789"):
            return False
        take("0123456789")
        return True

    def term() -> bool:
        if take("("):
            return num() and take("+*") and num() and take(")")
        return num() or name()

    def expr() -> bool:
        if not term():
            return False
        for _ in range(2):
            if not take("+*"):
                break
            if not term():
                return False
        return True

    def stmt() -> bool:
        return name() and take("=") and expr()

    if not stmt():
        return False
    for _ in range(2):
        if not take(";"):
            break
        if not stmt():
            return False
    return pos == len(text)


def test_reference_parser_rejects_near_misses():
    assert _parse_program("a=1") and _parse_program("x1=(3*4)+y;b=7*c*2;z=z")
    for bad in ("", "a=", "a=01", "ab1=2", "a=1;b=2;c=3;d=4", "a=(1+b)", "a=1+2+3+4", "a=1;"):
        assert not _parse_program(bad), bad


@pytest.mark.parametrize("backend", BACKENDS)
def test_ebnf_outputs_parse(tok, model, backend):
    for seed in (*SEEDS, 3, 4):
        c = compile_constraint(tok, ebnf=EBNF, backend=backend)
        ids = constrained_generate(model, tok, [0], c, max_tokens=80, seed=seed)
        text = tok.decode(ids)
        assert c.is_finished(), f"seed {seed}: did not complete: {text!r}"
        assert _parse_program(text), f"seed {seed}: {text!r}"


# -- masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_is_exact_and_covers_padded_ids(tok, backend):
    c = compile_constraint(tok, regex=r"[0-9]{2}", backend=backend)
    assert isinstance(c, Constraint)
    row = torch.zeros(MODEL_VOCAB)
    c.mask_logits(row)
    allowed = set(torch.isfinite(row).nonzero().flatten().tolist())
    digits = {tok.token_to_id(str(d)) for d in range(10)}
    # Digits are split one by one by the pre-tokenizer, so exactly the 10 digit tokens remain.
    assert allowed == digits
    assert torch.isinf(row[tok.vocab_size :]).all()
    c.accept(tok.token_to_id("4"))
    assert not c.is_finished()
    row = torch.zeros(MODEL_VOCAB)
    c.mask_logits(row)
    assert set(torch.isfinite(row).nonzero().flatten().tolist()) == digits  # no EOS yet
    c.accept(tok.token_to_id("2"))
    assert c.is_finished()  # nothing but a stop token can follow
    row = torch.zeros(MODEL_VOCAB)
    c.mask_logits(row)
    assert set(torch.isfinite(row).nonzero().flatten().tolist()) == set(tok.stop_token_ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_token_allowed_only_where_the_grammar_may_end(tok, backend):
    c = compile_constraint(tok, regex=r"ab?", backend=backend)
    eos = tok.eos_token_id
    assert not c.allowed(eos)
    c.accept(tok.token_to_id("a"))
    assert c.allowed(eos) and c.allowed(tok.token_to_id("b")) and not c.is_finished()
    c.accept(eos)
    assert c.is_finished()
    with pytest.raises(ValueError, match="after the grammar finished"):
        c.accept(tok.token_to_id("b"))


def test_backends_compute_identical_masks(tok):
    """Two independent engines, one language: the masks must agree along a random walk."""
    pattern = r"[a-z ]{0,12}(,[0-9]+)?"
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        a, b = (compile_constraint(tok, regex=pattern, backend=name) for name in BACKENDS)
        for _ in range(20):
            row_a, row_b = torch.zeros(tok.vocab_size), torch.zeros(tok.vocab_size)
            a.mask_logits(row_a)
            b.mask_logits(row_b)
            assert torch.equal(row_a, row_b)
            allowed = torch.isfinite(row_a).nonzero().flatten()
            token = int(allowed[torch.randint(len(allowed), (1,), generator=gen)])
            a.accept(token)
            b.accept(token)
            assert a.is_finished() == b.is_finished()
            if a.is_finished():
                break


@pytest.mark.parametrize("backend", BACKENDS)
def test_disallowed_token_raises_and_leaves_state(tok, backend):
    c = compile_constraint(tok, json_schema={"type": "boolean"}, backend=backend)
    with pytest.raises(ValueError, match="not allowed by the JSON schema"):
        c.accept(tok.token_to_id("x"))
    with pytest.raises(ValueError, match="not allowed"):
        c.accept(MODEL_VOCAB - 1)  # a padded id beyond the tokenizer
    for token in tok.encode("false"):
        c.accept(token)
    assert c.is_finished()


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_object_accepts_any_object_only(tok, backend):
    value = {"a": [1, {"b": None}], "c": "x y", "d": -2.5e3, "e": {}}
    text = json.dumps(value, separators=JSON_SEPARATORS[backend])
    c = compile_constraint(tok, json_object=True, backend=backend)
    for token in tok.encode(text):
        c.accept(token)
    c.accept(tok.eos_token_id)
    assert c.is_finished()
    for not_object in ("[1]", '"s"', "7"):
        c = compile_constraint(tok, json_object=True, backend=backend)
        with pytest.raises(ValueError, match="not allowed"):
            for token in tok.encode(not_object):
                c.accept(token)


class _Biased(torch.nn.Module):
    """The model with a logit bias: a random model would ramble inside free-form JSON."""

    def __init__(self, model, bias: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.config, self.bias = model, model.config, bias

    def forward(self, input_ids, **kwargs):
        out = self.inner(input_ids, **kwargs)
        out.logits = out.logits + self.bias
        return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_object_generation_completes(tok, model, backend):
    bias = torch.zeros(MODEL_VOCAB)
    for piece in ('"', "}", "]", "1"):
        bias[tok.token_to_id(piece)] = 6.0
    biased = _Biased(model, bias)
    for seed in SEEDS:
        c = compile_constraint(tok, json_object=True, backend=backend)
        text = tok.decode(constrained_generate(biased, tok, [0], c, max_tokens=100, seed=seed))
        assert c.is_finished(), text
        assert isinstance(json.loads(text), dict)


# -- specs, errors and the cache ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"json_schema": {"type": "objec"}}, "invalid JSON schema.*objec"),
        ({"json_schema": '{"type": '}, "not valid JSON.*line 1 column"),
        ({"json_schema": ["a"]}, "must be an object"),
        ({"json_schema": {"type": "string", "pattern": "(("}}, "invalid JSON schema"),
        ({"regex": "a("}, "invalid regex"),
        ({"regex": ""}, "non-empty string"),
        ({"ebnf": "root ::= ("}, "invalid EBNF grammar"),
        ({"ebnf": 'root ::= missing "x"'}, "invalid EBNF grammar"),
        ({}, "exactly one of .* got none"),
        ({"regex": "a", "ebnf": 'root ::= "a"'}, "got regex, ebnf"),
        ({"regex": "a", "json_object": True}, "got regex, json_object"),
    ],
)
def test_bad_specs_raise_clear_errors(tok, backend, spec, message):
    with pytest.raises(ValueError, match=message):
        compile_constraint(tok, backend=backend, **spec)


def test_bad_backend_and_tokenizer(tok):
    with pytest.raises(ValueError, match="unknown grammar backend 'outlines'"):
        compile_constraint(tok, regex="a", backend="outlines")
    with pytest.raises(TypeError, match="lmforge Tokenizer"):
        compile_constraint(object(), regex="a")


def test_compiled_grammars_are_cached_per_tokenizer_and_spec(tok):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "null"}}}
    reordered = {"properties": {"b": {"type": "null"}, "a": {"type": "integer"}}, "type": "object"}
    first = compile_constraint(tok, json_schema=schema)
    cache = compiled_grammars(tok)
    size = len(cache)
    second = compile_constraint(tok, json_schema=json.dumps(reordered))
    assert len(cache) == size and first.spec == second.spec
    first.accept(tok.token_to_id("{"))  # constraints share the grammar, not the state
    assert not second.allowed(tok.token_to_id('"'))
    compile_constraint(tok, json_schema={"type": "integer"})
    assert len(cache) == size + 1


def test_close_json_schema():
    schema = {
        "type": "object",
        "properties": {"p": {"type": "object", "properties": {"q": {}}}, "r": {}},
        "$defs": {"d": {"properties": {"x": {}}, "additionalProperties": {"type": "integer"}}},
        "allOf": [{"properties": {"s": {}}}],
        "prefixItems": [{"type": "integer"}],
    }
    closed = close_json_schema(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["p"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["r"]
    assert closed["$defs"]["d"]["additionalProperties"] == {"type": "integer"}
    assert "additionalProperties" not in closed["allOf"][0]
    assert closed["items"] is False
    assert "additionalProperties" not in schema  # the input is not modified
    # Closing only narrows: what validates against the closed schema validates against the open.
    jsonschema.validate({"p": {"q": 1}, "r": 2}, closed)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"p": {"q": 1, "z": 0}}, closed)


def test_constrained_generate_checks_arguments(tok, model):
    c = compile_constraint(tok, regex="a")
    with pytest.raises(ValueError, match="max_tokens"):
        constrained_generate(model, tok, [0], c, max_tokens=0)
    with pytest.raises(ValueError, match="at least one token"):
        constrained_generate(model, tok, [], c, max_tokens=4)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        constrained_generate(model, tok, [0], c, max_tokens=10_000)
    free = constrained_generate(model, tok, [0], None, max_tokens=7, seed=0)
    assert 1 <= len(free) <= 7
    assert constrained_generate(model, tok, [0], None, max_tokens=7, seed=0) == free


def test_lark_grammar_with_embedded_schema(tok, model):
    """llguidance's Lark dialect (what tool calling uses): literal text around a ``%json``
    schema; every sample is the literal frame around JSON that validates."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0,
              "maximum": 99}}, "required": ["n"], "additionalProperties": False,
              "x-guidance": {"whitespace_flexible": False}}  # fmt: skip
    grammar = f'start: "<v>" %json {json.dumps(schema)} "</v>"\n'
    for seed in SEEDS:
        c = compile_constraint(tok, lark=grammar)
        text = tok.decode(constrained_generate(model, tok, [0], c, max_tokens=40, seed=seed))
        assert c.is_finished(), text
        assert text.startswith("<v>") and text.endswith("</v>"), text
        schema.pop("x-guidance", None)
        jsonschema.validate(json.loads(text[3:-4]), schema)
    with pytest.raises(ValueError, match="Lark grammars need the llguidance backend"):
        compile_constraint(tok, lark=grammar, backend="xgrammar")
    with pytest.raises(ValueError, match="invalid Lark grammar"):
        compile_constraint(tok, lark="start: (")
