"""A regular grammar of the action language (`lmforge.agents.actions`) for the engine's
structured decoding: a constrained model can only write responses the parser accepts.

    >>> c = compile_constraint(tok, regex=response_regex((128, 128)))
    >>> engine.generate([prompt], SamplingParams(max_tokens=200, constraint=c))

The language is regular: coordinates are bounded integers (`int_range_regex` spells
0…n−1 without leading zeros, so with the screen size the grammar admits only on-screen
points), strings have bounded length, hotkeys are key names from a fixed list. The regex uses
only what both grammar engines (llguidance, xgrammar) and Python's `re` share: literals,
character classes, groups, alternation and bounded repetition.

With ``typed`` (`instruction_spans` of the task's instruction) ``type`` may write only one of
those spans: the agent types what it was asked to type, copied whole, never a name or value
from memory. A 0.4M-parameter agent that does not copy from its instruction types the names
it saw most in training ("Sign in as carol" → ``type('alice')``); held to the instruction's
spans it types ``'carol'`` (BENCHMARKS.md, "GUI agent: typing held to the instruction").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmforge.agents.actions import (
    ACTION_SIGNATURES,
    KEYS,
    MAX_CONTENT,
    MAX_HOTKEY_KEYS,
    MAX_THOUGHT,
    SCROLL_DIRECTIONS,
    quote,
)

# one character of a quoted string: printable ASCII except ' and \, or an escaped ' or \
STRING_CHAR = r"([ -&(-\[\]-~]|\\[\\'])"
THOUGHT_CHAR = r"[ -~]"


def int_range_regex(n: int) -> str:
    """A regex matching exactly the decimal integers 0 … n−1 (no sign, no leading zeros)."""
    if n < 1:
        raise ValueError(f"an empty coordinate range: n={n} must be ≥ 1")
    hi = str(n - 1)
    if len(hi) == 1:
        return f"[0-{hi}]"
    parts = ["[0-9]"] + [f"[1-9][0-9]{{{k - 1}}}" for k in range(2, len(hi))]
    for i, digit in enumerate(hi):  # same length as hi: a smaller digit at position i
        low = "1" if i == 0 else "0"
        if digit > low:
            top = chr(ord(digit) - 1)
            rest = len(hi) - i - 1
            cls = low if top == low else f"[{low}-{top}]"
            parts.append(hi[:i] + cls + (f"[0-9]{{{rest}}}" if rest else ""))
    parts.append(hi)
    return "(" + "|".join(parts) + ")"


def instruction_spans(instruction: str) -> list[str]:
    """What ``type`` may write when typing is held to ``instruction``: each quoted span
    (``'Remember me'``) and each word without its quotes or a trailing ``, . ; : ! ?`` —
    at most `MAX_CONTENT` characters each, sorted."""
    spans = set(re.findall(r"'([^']+)'", instruction))
    spans |= {w.strip("'").rstrip(",.;:!?").strip("'") for w in instruction.split()}
    return sorted(s for s in spans if 0 < len(s) <= MAX_CONTENT)


def string_choice_regex(contents: Sequence[str]) -> str:
    """A regex for a quoted string of the action language that is exactly one of
    ``contents`` (escaped as `lmforge.agents.actions.quote` writes them)."""
    if not contents:
        raise ValueError("no string to choose from")
    written = sorted({quote(c)[1:-1] for c in contents}, key=lambda c: (-len(c), c))
    return "'(" + "|".join(re.escape(c) for c in written) + ")'"


def _argument_regex(kind: str, index: int, screen: tuple[int, int] | None) -> str:
    if kind == "int":
        return int_range_regex(screen[index % 2]) if screen else "(0|[1-9][0-9]*)"
    if kind == "str":
        return f"'{STRING_CHAR}{{0,{MAX_CONTENT}}}'"
    if kind == "keys":
        key = "(" + "|".join(sorted(KEYS, key=lambda k: (-len(k), k))) + ")"
        return f"'{key}( {key}){{0,{MAX_HOTKEY_KEYS - 1}}}'"
    if kind == "dir":
        return "(" + "|".join(SCROLL_DIRECTIONS) + ")"
    raise ValueError(f"unknown argument kind {kind!r}")


def action_regex(screen: tuple[int, int] | None = None, typed: Sequence[str] | None = None) -> str:
    """A regex for one action (``click(12,40)``); with ``screen`` = (width, height) the
    coordinates are bounded to the screenshot; with ``typed`` ``type`` writes one of those
    strings (none: no ``type`` action at all)."""
    alternatives = []
    for name, (_, kinds) in ACTION_SIGNATURES.items():
        if name == "type" and typed is not None:
            if typed:
                alternatives.append(r"type\(" + string_choice_regex(typed) + r"\)")
            continue
        args = ",".join(_argument_regex(k, i, screen) for i, k in enumerate(kinds))
        alternatives.append(re.escape(name) + r"\(" + args + r"\)")
    return "(" + "|".join(alternatives) + ")"


def response_regex(
    screen: tuple[int, int] | None = None,
    typed: Sequence[str] | None = None,
    thought: str | None = None,
) -> str:
    """A regex for a full response ``Thought: <1–MAX_THOUGHT chars>\\nAction: <action>``
    (``screen``, ``typed``: as `action_regex`; ``thought``: a regex the thought must match
    instead, e.g. `lmforge.agents.thoughts.thought_regex`)."""
    thought = thought or f"{THOUGHT_CHAR}{{1,{MAX_THOUGHT}}}"
    return f"Thought: {thought}\\nAction: " + action_regex(screen, typed)


__all__ = [
    "STRING_CHAR",
    "THOUGHT_CHAR",
    "action_regex",
    "instruction_spans",
    "int_range_regex",
    "response_regex",
    "string_choice_regex",
]
