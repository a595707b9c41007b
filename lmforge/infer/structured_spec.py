"""Grammar specs for structured generation: what a request's constraint is, checked and in
canonical form before any grammar engine sees it.

`grammar_spec` takes exactly one of a JSON Schema (dict or JSON text), a regex, an EBNF grammar
(GBNF dialect) or ``json_object=True`` and returns a `GrammarSpec` whose text is canonical (a
schema is serialised with sorted keys), so equal specs share one compiled grammar. JSON objects
that declare ``properties`` are closed (`close_json_schema`), as in OpenAI's strict structured
outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["GRAMMAR_KIND_NAMES", "GrammarSpec", "close_json_schema", "grammar_spec"]

# How errors name each kind of grammar.
GRAMMAR_KIND_NAMES = {
    "json_schema": "JSON schema",
    "regex": "regex",
    "ebnf": "EBNF grammar",
    "lark": "Lark grammar",
}


@dataclass(frozen=True)
class GrammarSpec:
    """One grammar: ``kind`` is "json_schema" | "regex" | "ebnf" | "lark"; ``text`` is canonical (a
    JSON schema is serialised with sorted keys, so equal schemas share a cache entry)."""

    kind: str
    text: str


def grammar_spec(
    *,
    json_schema: dict | bool | str | None = None,
    regex: str | None = None,
    ebnf: str | None = None,
    json_object: bool = False,
    lark: str | None = None,
) -> GrammarSpec:
    """Check that exactly one grammar is given and return it in canonical form. ``lark`` is
    llguidance's Lark dialect (``%json {…}`` embeds a schema; ``&`` and ``~`` in lexemes)."""
    given = [
        name
        for name, value in (
            ("json_schema", json_schema), ("regex", regex), ("ebnf", ebnf), ("lark", lark)
        )
        if value is not None
    ] + (["json_object"] if json_object else [])  # fmt: skip
    if len(given) != 1:
        raise ValueError(
            "give exactly one of json_schema, regex, ebnf, lark or json_object=True, got "
            + (", ".join(given) if given else "none")
        )
    if json_object:
        return GrammarSpec("json_schema", json.dumps({"type": "object"}))
    if json_schema is not None:
        schema = _load_schema(json_schema)
        return GrammarSpec("json_schema", json.dumps(close_json_schema(schema), sort_keys=True))
    kind, text = next(
        (k, v) for k, v in (("regex", regex), ("ebnf", ebnf), ("lark", lark)) if v is not None
    )
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
