"""Structured generation: constrain decoding to a JSON Schema, a regex or an EBNF grammar.

At every step a grammar engine computes which tokens may come next as a bitmask over the
vocabulary (one bit per token id); disallowed logits become ``-inf`` before sampling, so every
sample stays inside the language of the grammar (token masking as in Willard & Louf 2023,
"Efficient Guided Generation for LLMs"). Two engines are supported, both driven from the
tokenizer's real byte-level vocabulary:

- ``llguidance`` (Microsoft, "Super-fast structured outputs"): a lazily built lexer + Earley
  parser, masks computed on demand;
- ``xgrammar`` (Dong et al. 2024, "XGrammar: Flexible and Efficient Structured Generation"):
  a pushdown automaton with context-independent tokens pre-checked at compile time.

``llguidance`` is the default, chosen by measurement (``bench/structured.py``, CPU time, 8k
and 32k-id lmforge tokenizers): both keep the per-token overhead of constrained decoding on the
``5m`` preset within a few percent (target ≤ 15%), but llguidance compiles a schema in 1-3 ms
where xgrammar takes 15-135 ms (growing with the vocabulary) — on the request's critical path,
since API clients send a fresh schema per request — and imports in 30 ms against ~4 s.
xgrammar's precomputed masks are ~4x cheaper per token (≈20 vs ≈90 µs), so pick it for long
outputs under one schema. xgrammar 0.2 needs two corrections made here: raw control characters
in length-bounded JSON strings are masked, and its own JSON separators are used.

    >>> c = compile_constraint(tok, json_schema={"type": "object", ...})
    >>> c.mask_logits(logits_row)      # in place: disallowed ids → -inf
    >>> c.accept(token_id)             # advance; ValueError if the token is not allowed
    >>> c.is_finished()                # the grammar is complete: the request ends ("stop")

The grammar may end exactly when the mask allows a stop token (the tokenizer's EOS /
``<|im_end|>``); accepting one finishes the constraint, as does reaching a state where nothing
but a stop token could follow. JSON has no free whitespace (separators: `JSON_SEPARATORS`), and
objects that declare ``properties`` admit only those (``additionalProperties: false`` unless the
schema says otherwise), as in OpenAI's strict structured outputs; ``json_object=True`` allows any
JSON object. EBNF uses the GBNF dialect (llama.cpp, xgrammar): ``rule ::= ...``, start ``root``.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lmforge.models.kv_cache import KVCache
from lmforge.tokenizer import Tokenizer

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "Constraint",
    "GrammarConstraint",
    "GrammarSpec",
    "JSON_SEPARATORS",
    "apply_token_bitmask_",
    "clear_grammar_cache",
    "close_json_schema",
    "compile_constraint",
    "constrained_generate",
    "grammar_spec",
]

BACKENDS = ("llguidance", "xgrammar")
DEFAULT_BACKEND = "llguidance"
# How each backend writes JSON (no other whitespace is allowed). xgrammar 0.2 hard-codes ", "
# inside free-form values, so compact separators would make "[1,2]" unreachable there.
JSON_SEPARATORS = {"llguidance": (",", ":"), "xgrammar": (", ", ": ")}
_CACHE_SIZE = 256  # compiled grammars kept per (tokenizer, backend)


@runtime_checkable
class Constraint(Protocol):
    """What the engine calls per request and decode step (see module docstring)."""

    def mask_logits(self, logits: torch.Tensor) -> None: ...
    def accept(self, token_id: int) -> None: ...
    def is_finished(self) -> bool: ...


# -- specs: validated and canonical at the edge ------------------------------------------


@dataclass(frozen=True)
class GrammarSpec:
    """One grammar: ``kind`` is "json_schema" | "regex" | "ebnf"; ``text`` is canonical (a
    JSON schema is serialised with sorted keys, so equal schemas share a cache entry)."""

    kind: str
    text: str


def grammar_spec(
    *,
    json_schema: dict | bool | str | None = None,
    regex: str | None = None,
    ebnf: str | None = None,
    json_object: bool = False,
) -> GrammarSpec:
    """Check that exactly one grammar is given and return it in canonical form."""
    given = [
        name
        for name, value in (("json_schema", json_schema), ("regex", regex), ("ebnf", ebnf))
        if value is not None
    ] + (["json_object"] if json_object else [])
    if len(given) != 1:
        raise ValueError(
            "give exactly one of json_schema, regex, ebnf or json_object=True, got "
            + (", ".join(given) if given else "none")
        )
    if json_object:
        return GrammarSpec("json_schema", json.dumps({"type": "object"}))
    if json_schema is not None:
        schema = _load_schema(json_schema)
        return GrammarSpec("json_schema", json.dumps(close_json_schema(schema), sort_keys=True))
    kind, text = ("regex", regex) if regex is not None else ("ebnf", ebnf)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{kind} must be a non-empty string, got {text!r}")
    return GrammarSpec(kind, text)


def _load_schema(schema: dict | bool | str) -> dict | bool:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"json_schema is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"json_schema must be an object (or boolean), got {type(schema).__name__}")
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"json_schema is not JSON-serialisable: {exc}") from exc
    return schema


_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "additionalProperties", "not", "contains")


def close_json_schema(schema: Any) -> Any:
    """A copy of ``schema`` in which every object that lists ``properties`` (and says nothing
    about other keys) gets ``additionalProperties: false``, and every ``prefixItems`` tuple
    without ``items`` gets ``items: false`` — OpenAI's strict mode. Every instance of the result
    is an instance of ``schema``. Branches of ``allOf`` are left as they are (closing one branch
    would forbid the properties of the others)."""
    if isinstance(schema, list):
        return [close_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: close_json_schema(v) for k, v in out[key].items()}
    for key in (*_SUBSCHEMA_LISTS, *_SUBSCHEMA_ONE):
        if key in out:
            out[key] = close_json_schema(out[key])
    open_keys = ("additionalProperties", "unevaluatedProperties", "patternProperties")
    if "properties" in out and not any(k in out for k in open_keys):
        out["additionalProperties"] = False
    if "prefixItems" in out and not any(k in out for k in ("items", "unevaluatedItems")):
        out["items"] = False
    return out


# -- backends -------------------------------------------------------------------------------


class _Vocab:
    """What both engines need from a lmforge tokenizer: the byte-level token strings, which
    ids are special, and the stop ids (EOS, ``<|im_end|>``)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.size = tokenizer.vocab_size
        self.tokens = [""] * self.size
        for text, i in tokenizer.backend.get_vocab(with_added_tokens=True).items():
            self.tokens[i] = text
        added = tokenizer.backend.get_added_tokens_decoder()
        self.special = sorted(i for i, t in added.items() if t.special)
        self.stop_ids = list(tokenizer.stop_token_ids)
        if not self.stop_ids:
            raise ValueError(
                "the tokenizer has no stop token (eos_token or <|im_end|>), so a constrained "
                "output could never end; set tokenizer.special_tokens['eos_token']"
            )
        self.tokenizer_json = tokenizer.backend.to_str()


class _LLGuidance:
    """llguidance: grammars as JSON documents; masks written straight into our buffer."""

    name = "llguidance"

    def __init__(self, vocab: _Vocab) -> None:
        import llguidance

        self.llg = llguidance
        self.tokenizer = llguidance.LLTokenizer(
            vocab.tokenizer_json, n_vocab=vocab.size, eos_token=vocab.stop_ids
        )

    def compile(self, spec: GrammarSpec) -> str:
        m = self.llg.LLMatcher
        try:
            if spec.kind == "json_schema":
                item, key = JSON_SEPARATORS[self.name]
                options = {
                    "whitespace_flexible": False,
                    "item_separator": item,
                    "key_separator": key,
                }
                grammar = m.grammar_from_json_schema(spec.text, overrides=options)
            else:
                grammar = self.llg.grammar_from(spec.kind, spec.text)
        except ValueError as exc:
            raise ValueError(f"invalid {_WHAT[spec.kind]}: {exc}") from exc
        error = m.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(f"invalid {_WHAT[spec.kind]}: {error.strip()}")
        return grammar

    def matcher(self, grammar: str) -> _LLGuidanceMatcher:
        matcher = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():  # validate_grammar passed, so this is a resource limit
            raise ValueError(f"grammar could not be started: {matcher.get_error()}")
        return _LLGuidanceMatcher(matcher)


class _LLGuidanceMatcher:
    def __init__(self, matcher) -> None:
        self.m = matcher

    def fill(self, words: np.ndarray) -> None:
        self.m.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)

    def accept(self, token_id: int) -> bool:
        return self.m.consume_token(token_id)

    def is_stopped(self, only_stop_allowed: Callable[[], bool]) -> bool:
        return self.m.is_stopped()


class _XGrammar:
    """xgrammar: a compiler per tokenizer (it caches grammars internally too)."""

    name = "xgrammar"

    def __init__(self, vocab: _Vocab) -> None:
        import xgrammar

        self.xgr = xgrammar
        # Special tokens become "" so xgrammar never emits them as literal text ("<|bos|>").
        special = set(vocab.special)
        encoded = ["" if i in special else t for i, t in enumerate(vocab.tokens)]
        info = xgrammar.TokenizerInfo(
            encoded, xgrammar.VocabType.BYTE_LEVEL, vocab_size=vocab.size,
            stop_token_ids=vocab.stop_ids,
        )  # fmt: skip
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        # xgrammar 0.2 lets raw control characters (U+0000-U+001F) into JSON strings, which
        # JSON forbids; compact JSON never contains one, so such tokens are always masked.
        clean = [not any(b < 0x20 for b in t) for t in info.decoded_vocab[: vocab.size]]
        self.json_words = np.packbits(np.array(clean, dtype=np.uint8), bitorder="little")
        self.json_words = np.pad(self.json_words, (0, (-self.json_words.size) % 4)).view(np.int32)

    def compile(self, spec: GrammarSpec):
        c = self.compiler
        try:
            if spec.kind == "json_schema":
                # Closed objects come from close_json_schema, the same for both backends.
                compiled = c.compile_json_schema(
                    spec.text, any_whitespace=False, separators=JSON_SEPARATORS[self.name],
                    strict_mode=False,
                )  # fmt: skip
                return compiled, self.json_words
            if spec.kind == "regex":
                return c.compile_regex(spec.text), None
            return c.compile_grammar(spec.text), None
        except RuntimeError as exc:  # xgrammar reports every grammar error as RuntimeError
            message = _XGR_LOCATION.sub("", str(exc).strip())
            raise ValueError(f"invalid {_WHAT[spec.kind]}: {message}") from exc

    def matcher(self, compiled) -> _XGrammarMatcher:
        grammar, keep = compiled
        return _XGrammarMatcher(self.xgr.GrammarMatcher(grammar), keep)


class _XGrammarMatcher:
    def __init__(self, matcher, keep: np.ndarray | None) -> None:
        self.m = matcher
        self.keep = keep
        self.words_t: torch.Tensor | None = None

    def fill(self, words: np.ndarray) -> None:
        if self.words_t is None:
            self.words_t = torch.from_numpy(words).view(1, -1)
        self.m.fill_next_token_bitmask(self.words_t)
        if self.keep is not None:
            np.bitwise_and(words, self.keep, out=words)

    def accept(self, token_id: int) -> bool:
        return self.m.accept_token(token_id)

    def is_stopped(self, only_stop_allowed: Callable[[], bool]) -> bool:
        """xgrammar has no "only a stop token may follow" query: when the input so far is a
        complete match, look at the next mask (which the next step reuses)."""
        if self.m.is_terminated():
            return True
        return self.m.is_completed() and only_stop_allowed()


_XGR_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[12:00:00] /path/x.cc:12: "
_WHAT = {"json_schema": "JSON schema", "regex": "regex", "ebnf": "EBNF grammar"}
_BACKEND_CLASSES = {"llguidance": _LLGuidance, "xgrammar": _XGrammar}


class _TokenizerState:
    """Per tokenizer: its vocab, one engine per backend, and an LRU of compiled grammars."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.vocab = _Vocab(tokenizer)
        self.backends: dict[str, Any] = {}
        self.compiled: OrderedDict[tuple[str, GrammarSpec], Any] = OrderedDict()


_STATES: weakref.WeakKeyDictionary[Tokenizer, _TokenizerState] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _compiled(tokenizer: Tokenizer, spec: GrammarSpec, backend: str):
    """(engine, compiled grammar, vocab), compiled once per (tokenizer, backend, spec)."""
    with _LOCK:
        state = _STATES.get(tokenizer)
        if state is None or state.vocab.size != tokenizer.vocab_size:
            state = _STATES[tokenizer] = _TokenizerState(tokenizer)
        engine = state.backends.get(backend)
        if engine is None:
            engine = state.backends[backend] = _BACKEND_CLASSES[backend](state.vocab)
        key = (backend, spec)
        compiled = state.compiled.get(key)
        if compiled is None:
            compiled = engine.compile(spec)
            state.compiled[key] = compiled
            if len(state.compiled) > _CACHE_SIZE:
                state.compiled.popitem(last=False)
        state.compiled.move_to_end(key)
        return engine, compiled, state.vocab


def clear_grammar_cache() -> None:
    """Forget every compiled grammar and tokenizer set-up (benchmarks time cold compiles)."""
    with _LOCK:
        _STATES.clear()


# -- the constraint -------------------------------------------------------------------------


def apply_token_bitmask_(logits: torch.Tensor, words: np.ndarray, vocab_size: int) -> None:
    """Set ``logits[i] = -inf`` for every id ``i`` whose bit (bit ``i % 32`` of int32 word
    ``i // 32``) is 0, and for every id ≥ ``vocab_size`` (a model may pad its vocabulary)."""
    n = min(vocab_size, logits.shape[-1])
    disallowed = np.unpackbits(np.invert(words).view(np.uint8), bitorder="little")[:n]
    mask = torch.from_numpy(disallowed.view(np.bool_))
    if logits.device.type != "cpu":
        mask = mask.to(logits.device, non_blocking=True)
    logits[:n].masked_fill_(mask, float("-inf"))
    if logits.shape[-1] > vocab_size:
        logits[vocab_size:] = float("-inf")


class GrammarConstraint:
    """One request's grammar state; implements `Constraint`. Build with `compile_constraint`.

    The mask for the next token is computed once per step into a preallocated int32 buffer
    and reused until the next `accept`.
    """

    def __init__(self, matcher, vocab: _Vocab, backend: str, spec: GrammarSpec) -> None:
        self.backend = backend
        self.spec = spec
        self._m = matcher
        self._vocab_size = vocab.size
        self._tokens = vocab.tokens
        self._words = np.zeros((vocab.size + 31) // 32, dtype=np.int32)
        self._mask_ready = False
        self._finished = False
        self.num_accepted = 0
        nonstop = np.ones(vocab.size, dtype=np.uint8)
        nonstop[vocab.stop_ids] = 0
        self._nonstop = np.packbits(nonstop, bitorder="little").view(np.uint8)
        self._nonstop_words = np.zeros_like(self._words)
        self._nonstop_words.view(np.uint8)[: self._nonstop.size] = self._nonstop

    def _fill(self) -> None:
        if not self._mask_ready:
            self._m.fill(self._words)
            self._mask_ready = True

    def _only_stop_allowed(self) -> bool:
        self._fill()
        return not np.any(self._words & self._nonstop_words)

    def mask_logits(self, logits: torch.Tensor) -> None:
        """Set disallowed entries of the 1-D row ``logits`` to ``-inf`` in place."""
        if logits.ndim != 1:
            raise ValueError(f"mask_logits expects one row [vocab], got {tuple(logits.shape)}")
        self._fill()
        apply_token_bitmask_(logits, self._words, self._vocab_size)

    def allowed(self, token_id: int) -> bool:
        """Whether ``token_id`` may come next."""
        if not 0 <= token_id < self._vocab_size or self._finished:
            return False
        self._fill()
        return bool((int(self._words[token_id >> 5]) >> (token_id & 31)) & 1)

    def accept(self, token_id: int) -> None:
        """Advance past ``token_id``; `ValueError` (state unchanged) if it is not allowed."""
        token_id = int(token_id)
        if self._finished:
            raise ValueError(f"token {token_id} after the grammar finished")
        if not self.allowed(token_id):
            text = self._tokens[token_id] if 0 <= token_id < self._vocab_size else None
            raise ValueError(
                f"token {token_id} ({text!r}) is not allowed by the {_WHAT[self.spec.kind]} here"
            )
        if not self._m.accept(token_id):  # the mask said yes, so this is an engine bug
            raise RuntimeError(f"{self.backend} rejected token {token_id} its own mask allowed")
        self._mask_ready = False
        self.num_accepted += 1

    def is_finished(self) -> bool:
        """True once a stop token was accepted or nothing but a stop token may follow."""
        if not self._finished:
            self._finished = self._m.is_stopped(self._only_stop_allowed)
        return self._finished


def compile_constraint(
    tokenizer: Tokenizer,
    *,
    json_schema: dict | bool | str | None = None,
    regex: str | None = None,
    ebnf: str | None = None,
    json_object: bool = False,
    backend: str | None = None,
) -> GrammarConstraint:
    """A fresh `Constraint` for one request. Exactly one of ``json_schema`` (dict or JSON
    text), ``regex``, ``ebnf`` (GBNF dialect) or ``json_object=True`` (any JSON object).
    Compiled grammars are cached per (tokenizer, backend, spec); a bad spec raises
    `ValueError` naming the problem. ``backend``: "llguidance" (default) or "xgrammar"."""
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a lmforge Tokenizer, got {type(tokenizer).__name__}")
    backend = DEFAULT_BACKEND if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown grammar backend {backend!r}; choose from {list(BACKENDS)}")
    spec = grammar_spec(json_schema=json_schema, regex=regex, ebnf=ebnf, json_object=json_object)
    engine, compiled, vocab = _compiled(tokenizer, spec, backend)
    return GrammarConstraint(engine.matcher(compiled), vocab, backend, spec)


# -- a single-request decode loop -----------------------------------------------------------


@torch.no_grad()
def constrained_generate(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    constraint: Constraint | None,
    max_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
) -> list[int]:
    """Decode one request with a KV cache: mask with ``constraint`` (None: unconstrained),
    sample (softmax at ``temperature``; 0 → greedy), `accept`. Stops when the constraint is
    finished, a stop token of ``tokenizer`` is sampled (not returned), or after ``max_tokens``.
    The engine does the same inside its continuous batch; this loop serves tests and the
    benchmark."""
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("prompt_ids must hold at least one token")
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be ≥ 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be ≥ 0 (0 means greedy)")
    limit = model.config.max_position_embeddings
    if len(prompt) + max_tokens > limit:
        raise ValueError(
            f"prompt ({len(prompt)}) + max_tokens ({max_tokens}) > max_position_embeddings={limit}"
        )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    stops = set(tokenizer.stop_token_ids)
    cache = KVCache.for_model(model, 1, len(prompt) + max_tokens)
    ids = torch.tensor([prompt], device=device)
    out: list[int] = []
    for _ in range(max_tokens):
        logits = model(ids, cache=cache, logits_to_keep=1).logits[0, -1].float()
        if constraint is not None:
            constraint.mask_logits(logits)
        if temperature == 0:
            token = int(logits.argmax())
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        if constraint is not None:
            constraint.accept(token)
        if token in stops:
            break
        out.append(token)
        if constraint is not None and constraint.is_finished():
            break
        ids = torch.tensor([[token]], device=device)
    return out
