"""The expert's thought language: the sentences `lmforge.agents.expert` thinks before each
step, as templates with named slots, and a regular grammar of them for structured decoding.

    >>> say("dd_pick", label="Size", want="Large")
    'The Size list is open; I pick Large.'
    >>> rx = thought_regex(instruction_spans("Set Size to Large, then press Save"))
    >>> bool(re.fullmatch(rx, "The Size list is open; I pick Large."))    # True
    >>> bool(re.fullmatch(rx, "The Font list is open; I pick Off."))      # False
    >>> bool(re.fullmatch(rx, "The Font list is open; I pick Large."))    # True: screen text

A slot in `INSTRUCTION_SLOTS` is copied from the task's instruction (in the expert's own
trajectories it is: the value to set, the box to tick, the tab, the row to open); the
grammar lets it be exactly one of `lmforge.agents.action_grammar.instruction_spans`. Every
other slot names what only the screen shows (a field's label, a dropdown's current value, a
dialog's title, a button) and is one or two words of letters and digits (`FREE_REGEX`);
a slot in `SCREEN_READ` (the list that is open) may be either.
A correction may start with `REFLECTION` (`lmforge.agents.agent_data.reflective`). Every
sentence of the expert's trajectories is in the language of its own instruction but one: the
held-out template profile_edit's "Plan must be 'Pro'" ("… choose 'Pro' and Save" does not name
the group; every training template does).

Why: the agent (an SFT'd 0.4M-parameter LM) failed most held-out tasks by naming in its
thought a value it saw in training instead of the instruction's ("Choose 'System' for
Theme" → "Theme must be 'Dark'; I choose it.") and then acting on its own thought. Held to
this grammar its thoughts keep the expert's form and choose among the instruction's words:
the same SFT agent goes from 0.24 to 0.35 held-out success (BENCHMARKS.md, "GUI agent:
thoughts held to the expert's language").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmforge.agents.actions import MAX_THOUGHT

THOUGHTS: dict[str, str] = {
    "tab": "'{label}' is on the {tab} tab; I open it.",
    "pane_scroll": "'{label}' is out of view; I scroll {dir}.",
    "pane_drag": "'{label}' is out of view, far {dir}; I drag the scrollbar.",
    "list_scroll": "'{label}' is not in view; I scroll {dir}.",
    "list_drag": "'{label}' is not in view, far {dir}; I drag the scrollbar.",
    "tick": "'{label}' must be ticked; I tick it.",
    "untick": "'{label}' must be unticked; I untick it.",
    "radio": "{label} must be '{want}'; I choose it.",
    "dd_open": "{label} shows {value}, not {want}; I open the list.",
    "dd_pick": "The {label} list is open; I pick {want}.",
    "dd_close": "The {other} list is open by mistake; I close it.",
    "field": "I click the {field} field to type in it.",
    "selected_type": "The text is selected; I type '{want}'.",
    "selected_delete": "The text is selected; I delete it.",
    "type_into": "I type '{want}' into {field}.",
    "select_all": "{label} holds '{text}'; I select all of it.",
    "dialog": "A '{title}' message covers the window; I close it.",
    "press": "Everything is set; I press {button}.",
    "open_row": "'{label}' is in view; I double-click to open it.",
    "submit_field": "I click the {label} field.",
    "submit": "'{want}' is typed; I press Enter.",
    "done": "The task is done.",
}
# slots the expert copies from the instruction; every other slot is screen text
INSTRUCTION_SLOTS = frozenset({"label", "tab", "want"})
# … except in a correction: it may re-tick a box the mistake disturbed, which the
# instruction does not name
REPAIRS = frozenset({"tick", "untick"})
# … and where the slot names what the screen shows, which the expert copies from the
# instruction only because its own steps went right: the list that is open
SCREEN_READ: dict[str, frozenset[str]] = {"dd_pick": frozenset({"label"})}
CHOICE_SLOTS = {"dir": ("up", "down")}
# a screen-text slot (a label, a value, a title): one or two words of letters and digits
FREE_WORD = 12  # letters and digits
FREE_WORDS = 2
FREE_SLOT = FREE_WORDS * (FREE_WORD + 1) - 1  # its longest
FREE_REGEX = f"[A-Za-z0-9]{{1,{FREE_WORD}}}( [A-Za-z0-9]{{1,{FREE_WORD}}}){{0,{FREE_WORDS - 1}}}"
REFLECTION = "My last step was a mistake. "
SLOT = re.compile(r"\{(\w+)\}")


def say(name: str, **slots: object) -> str:
    """Thought ``name`` of `THOUGHTS` with its slots filled."""
    return THOUGHTS[name].format(**slots)


def _choices(regex_parts: Sequence[str]) -> str:
    return "(" + "|".join(regex_parts) + ")"


def _slot_regex(slot: str, kind: str, spans: list[str]) -> tuple[str, int]:
    """A slot's regex and its longest match: ``kind`` "copy" (one of ``spans``), "free"
    (`FREE_REGEX`), "either" (one of both), or a choice of `CHOICE_SLOTS`."""
    copy = _choices([re.escape(s) for s in sorted(spans, key=lambda s: (-len(s), s))])
    longest = max(map(len, spans), default=0)
    if slot in CHOICE_SLOTS:
        return _choices(CHOICE_SLOTS[slot]), max(map(len, CHOICE_SLOTS[slot]))
    if kind == "copy":
        return copy, longest
    if kind == "either" and spans:
        return _choices([copy, FREE_REGEX]), max(longest, FREE_SLOT)
    return FREE_REGEX, FREE_SLOT


def _template_regex(
    template: str, spans: list[str], budget: int, kinds: dict[str, str]
) -> str | None:
    """``template`` as a regex whose longest match is ≤ ``budget`` characters (the longest
    spans dropped until it fits; slot kinds as `_slot_regex`, "free" where ``kinds`` says
    nothing), or None when it cannot fit."""
    parts = SLOT.split(template)  # literal, slot, literal, slot, …
    fitting = sorted(spans, key=len)
    while True:
        out, length = [], 0
        for i, p in enumerate(parts):
            if i % 2 == 0:
                out.append(re.escape(p))
                length += len(p)
                continue
            kind = kinds.get(p, "free")
            if kind == "copy" and not fitting:
                return None
            regex, longest = _slot_regex(p, kind, fitting)
            out.append(regex)
            length += longest
        if length <= budget:
            return "".join(out)
        if not fitting:
            return None
        fitting.pop()


def thought_regex(spans: Sequence[str]) -> str:
    """A regex for a thought in the expert's language (`THOUGHTS`, optionally after
    `REFLECTION`) whose instruction slots copy one of ``spans`` (quote-free spans only; a
    correction's box to re-tick, `REPAIRS`, may also be screen text); every match is at
    most `MAX_THOUGHT` characters."""
    usable = sorted({s for s in spans if "'" not in s and s})
    alternatives = []
    for name, template in THOUGHTS.items():
        for prefix in ("", REFLECTION):
            kinds = dict.fromkeys(INSTRUCTION_SLOTS, "copy")
            if prefix and name in REPAIRS:
                kinds["label"] = "either"
            kinds.update(dict.fromkeys(SCREEN_READ.get(name, ()), "either"))
            body = _template_regex(template, usable, MAX_THOUGHT - len(prefix), kinds)
            if body is not None:
                alternatives.append(re.escape(prefix) + body)
    return _choices(alternatives)


__all__ = [
    "CHOICE_SLOTS",
    "FREE_REGEX",
    "FREE_SLOT",
    "FREE_WORD",
    "FREE_WORDS",
    "INSTRUCTION_SLOTS",
    "REFLECTION",
    "REPAIRS",
    "SCREEN_READ",
    "SLOT",
    "THOUGHTS",
    "say",
    "thought_regex",
]
