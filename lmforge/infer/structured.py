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
    >>> constrained_generate(model, tok, prompt_ids, c, max_tokens=64)  # one request alone

The grammar may end exactly when the mask allows a stop token (the tokenizer's EOS /
``<|im_end|>``); accepting one finishes the constraint, as does reaching a state where nothing
but a stop token could follow. JSON has no free whitespace (separators: `JSON_SEPARATORS`), and
objects that declare ``properties`` admit only those (``additionalProperties: false`` unless the
schema says otherwise), as in OpenAI's strict structured outputs; ``json_object=True`` allows any
JSON object. EBNF uses the GBNF dialect (llama.cpp, xgrammar): ``rule ::= ...``, start ``root``.

Specs are checked and made canonical in `lmforge.infer.structured_spec`; the two engines and the
cache of compiled grammars are in `lmforge.infer.structured_backends`; this module is the
per-request `GrammarConstraint` the engine drives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from lmforge.infer.structured_backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    GrammarVocab,
    compiled_grammar,
)
from lmforge.infer.structured_spec import (
    GRAMMAR_KIND_NAMES,
    GrammarSpec,
    grammar_spec,
)
from lmforge.models.kv_cache import KVCache
from lmforge.tokenizer import Tokenizer

__all__ = [
    "Constraint",
    "GrammarConstraint",
    "apply_token_bitmask_",
    "compile_constraint",
    "constrained_generate",
]


@runtime_checkable
class Constraint(Protocol):
    """What the engine calls per request and decode step (see module docstring)."""

    def mask_logits(self, logits: torch.Tensor) -> None: ...
    def accept(self, token_id: int) -> None: ...
    def is_finished(self) -> bool: ...


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

    def __init__(self, matcher, vocab: GrammarVocab, backend: str, spec: GrammarSpec) -> None:
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
                f"token {token_id} ({text!r}) is not allowed by the {GRAMMAR_KIND_NAMES[self.spec.kind]} here"
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
    lark: str | None = None,
) -> GrammarConstraint:
    """A fresh `Constraint` for one request. Exactly one of ``json_schema`` (dict or JSON
    text), ``regex``, ``ebnf`` (GBNF dialect) or ``json_object=True`` (any JSON object).
    Compiled grammars are cached per (tokenizer, backend, spec); a bad spec raises
    `ValueError` naming the problem. ``backend``: "llguidance" (default) or "xgrammar";
    ``lark`` (llguidance's Lark dialect, as tool calling uses) needs llguidance."""
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a lmforge Tokenizer, got {type(tokenizer).__name__}")
    backend = DEFAULT_BACKEND if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown grammar backend {backend!r}; choose from {list(BACKENDS)}")
    spec = grammar_spec(
        json_schema=json_schema, regex=regex, ebnf=ebnf, json_object=json_object, lark=lark
    )
    engine, compiled, vocab = compiled_grammar(tokenizer, spec, backend)
    return GrammarConstraint(engine.matcher(compiled), vocab, backend, spec)


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
    The engine does the same inside its continuous batch; this loop is one request alone, for
    checking a constraint's outputs (``tests/infer/test_structured.py``) and timing the
    grammar's share of decoding (``bench/structured.py``). ``ValueError`` for an empty prompt,
    ``max_tokens`` < 1, a negative temperature, or a request longer than the model's
    ``max_position_embeddings``."""
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
