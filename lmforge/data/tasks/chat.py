"""An embedded, seeded synthetic chat dataset: questions a tiny model can learn to answer.

    >>> chats = synthetic_chats(1000, seed=0)
    >>> chats[0]                                 # doctest: +SKIP
    [{'role': 'user', 'content': 'What is 12 + 7?'},
     {'role': 'assistant', 'content': '12 + 7 = 19.'}]

The conversations reuse the world of `lmforge.data.tasks.corpus` (the same names, animals,
places and true arithmetic), so a model pretrained on that corpus only has to learn the
question → answer format: Alpaca-style instruction tuning at toy scale. Every answer is
correct by construction. Some conversations carry a system message or a second turn, so
assistant-only loss masking has several assistant spans to find.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from lmforge.data.tasks.corpus import ANIMAL_SOUNDS, DAYS, NAMES, PLACES, short_story
from lmforge.io import atomic_write_text

__all__ = ["CHAT_KINDS", "synthetic_chats", "write_chat_jsonl"]

Message = dict[str, str]


def _sum(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if rng.random() < 0.7:
        return f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", f"{a} - {b} = {a - b}."


def _animal(rng: random.Random) -> tuple[str, str]:
    animal, sound = rng.choice(sorted(ANIMAL_SOUNDS.items()))
    question = rng.choice(["What does a {a} say?", "What sound does a {a} make?"])
    return question.format(a=animal), f"A {animal} says {sound}."


def _next_day(rng: random.Random) -> tuple[str, str]:
    i = rng.randrange(len(DAYS))
    return f"What day comes after {DAYS[i]}?", f"After {DAYS[i]} comes {DAYS[(i + 1) % 7]}."


def _count(rng: random.Random) -> tuple[str, str]:
    start, n = rng.randint(1, 12), rng.randint(3, 7)
    numbers = ", ".join(str(i) for i in range(start, start + n))
    return f"Count {n} numbers starting from {start}.", f"{numbers}."


def _story_request(rng: random.Random) -> tuple[str, str]:
    story = short_story(rng)
    name = story.split(" named ")[1].split(".")[0]
    return f"Tell me a short story about {name}.", story


def _where(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(sorted(NAMES))
    place = rng.choice(PLACES)
    return (
        f"{name} went to the {place}. Where did {name} go?",
        f"{name} went to the {place}.",
    )


# Kind name -> (question/answer generator, relative weight).
CHAT_KINDS: dict[str, tuple[Callable[[random.Random], tuple[str, str]], float]] = {
    "sum": (_sum, 0.35),
    "animal": (_animal, 0.15),
    "next_day": (_next_day, 0.1),
    "count": (_count, 0.1),
    "story": (_story_request, 0.15),
    "where": (_where, 0.15),
}
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer briefly and correctly."]


def synthetic_chats(n: int, seed: int = 0) -> list[list[Message]]:
    """``n`` conversations (lists of ``{"role", "content"}``), identical for identical
    ``(n, seed)``: one or two user/assistant exchanges, sometimes after a system message."""
    if n < 0:
        raise ValueError(f"n={n} must be ≥ 0")
    rng = random.Random(seed)
    kinds = sorted(CHAT_KINDS)
    weights = [CHAT_KINDS[k][1] for k in kinds]
    chats = []
    for _ in range(n):
        messages: list[Message] = []
        if rng.random() < 0.2:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _turn in range(1 if rng.random() < 0.8 else 2):
            question, answer = CHAT_KINDS[rng.choices(kinds, weights)[0]][0](rng)
            messages += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        chats.append(messages)
    return chats


def write_chat_jsonl(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write `synthetic_chats` as JSONL records ``{"messages": [...]}`` (atomically)."""
    lines = (json.dumps({"messages": m}) for m in synthetic_chats(n, seed))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)
