"""Grammar engines for structured generation: llguidance and xgrammar behind one interface,
and a per-tokenizer cache of compiled grammars.

Both engines are driven from the tokenizer's real byte-level vocabulary (`GrammarVocab`). A
backend compiles a `GrammarSpec` (``compile``) and starts a matcher for one request
(``matcher``); a matcher fills the allowed-token bitmask (``fill``: int32 words, bit ``i % 32``
of word ``i // 32`` is token ``i``), advances (``accept``) and says whether the grammar has
ended (``is_stopped``). `compiled_grammar` compiles each (tokenizer, backend, spec) once and
keeps the most recent `CACHE_SIZE` per tokenizer. Why llguidance is the default, and the two
corrections xgrammar 0.2 needs, is in `lmforge.infer.structured`.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lmforge.infer.structured_spec import GRAMMAR_KIND_NAMES, GrammarSpec
from lmforge.tokenizer import Tokenizer

__all__ = [
    "BACKENDS",
    "CACHE_SIZE",
    "DEFAULT_BACKEND",
    "JSON_SEPARATORS",
    "GrammarVocab",
    "clear_grammar_cache",
    "compiled_grammar",
    "compiled_grammars",
]

BACKENDS = ("llguidance", "xgrammar")
DEFAULT_BACKEND = "llguidance"
# How each backend writes JSON (no other whitespace is allowed). xgrammar 0.2 hard-codes ", "
# inside free-form values, so compact separators would make "[1,2]" unreachable there.
JSON_SEPARATORS = {"llguidance": (",", ":"), "xgrammar": (", ", ": ")}
CACHE_SIZE = 256  # compiled grammars kept per (tokenizer, backend)


class GrammarVocab:
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

    def __init__(self, vocab: GrammarVocab) -> None:
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
            raise ValueError(f"invalid {GRAMMAR_KIND_NAMES[spec.kind]}: {exc}") from exc
        error = m.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(f"invalid {GRAMMAR_KIND_NAMES[spec.kind]}: {error.strip()}")
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

    def __init__(self, vocab: GrammarVocab) -> None:
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
            if spec.kind == "lark":
                raise ValueError("Lark grammars need the llguidance backend")
            return c.compile_grammar(spec.text), None
        except RuntimeError as exc:  # xgrammar reports every grammar error as RuntimeError
            message = _XGR_LOCATION.sub("", str(exc).strip())
            raise ValueError(f"invalid {GRAMMAR_KIND_NAMES[spec.kind]}: {message}") from exc

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
_BACKEND_CLASSES = {"llguidance": _LLGuidance, "xgrammar": _XGrammar}


class _TokenizerState:
    """Per tokenizer: its vocab, one engine per backend, and an LRU of compiled grammars."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.vocab = GrammarVocab(tokenizer)
        self.backends: dict[str, Any] = {}
        self.compiled: OrderedDict[tuple[str, GrammarSpec], Any] = OrderedDict()


_STATES: weakref.WeakKeyDictionary[Tokenizer, _TokenizerState] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def compiled_grammar(
    tokenizer: Tokenizer, spec: GrammarSpec, backend: str
) -> tuple[Any, Any, GrammarVocab]:
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
            if len(state.compiled) > CACHE_SIZE:
                state.compiled.popitem(last=False)
        state.compiled.move_to_end(key)
        return engine, compiled, state.vocab


def compiled_grammars(tokenizer: Tokenizer) -> OrderedDict[tuple[str, GrammarSpec], Any]:
    """The live LRU of ``tokenizer``'s compiled grammars, keyed by (backend, spec), oldest
    first (empty before its first compile). For inspection and benchmarks: clearing it
    forces cold compiles but keeps the tokenizer set-up."""
    with _LOCK:
        state = _STATES.get(tokenizer)
        return OrderedDict() if state is None else state.compiled


def clear_grammar_cache() -> None:
    """Forget every compiled grammar and tokenizer set-up (benchmarks time cold compiles)."""
    with _LOCK:
        _STATES.clear()
