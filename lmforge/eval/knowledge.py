"""A synthetic knowledge world for hallucination studies: fictional people with a birthplace,
a birth year and a profession, seeded and reproducible. A model is trained on the facts of a
known subset; questions about the others have no answer it could have learned, so every
answer it gives to them is a hallucination by construction.

    people = knowledge_world(200, seed=0)
    known, unknown = split_people(people, known_fraction=0.5, seed=0)
    texts = fact_documents(known)                 # training text
    items = question_items(known + unknown)       # EvalItem s, exact answers

Chat-style: ``question_items(..., chat=True)`` asks each question as a user message (the
prompt a message list, rendered through the model folder's chat template when encoded), and
``fact_documents(..., render_chat=tok.apply_chat_template)`` writes each question and its
answer as a rendered user / assistant conversation to train on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.eval.tasks import EvalItem
from lmforge.eval.verifiers import exact_match

__all__ = [
    "ATTRIBUTES",
    "Person",
    "fact_documents",
    "knowledge_world",
    "question_items",
    "question_text",
    "split_people",
]

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
CITIES = ("Amberfall", "Brightwater", "Coldharbor", "Dunmere", "Eastvale", "Frostholm",
          "Greywick", "Highmoor", "Ironbridge", "Larkspur")  # fmt: skip
JOBS = ("baker", "painter", "sailor", "doctor", "farmer", "teacher", "miner", "poet")
# attribute → (fact sentence, question, how the answer is read from a person)
ATTRIBUTES = {
    "city": ("{name} was born in {value}.", "Where was {name} born?"),
    "year": ("{name} was born in the year {value}.", "In which year was {name} born?"),
    "job": ("{name} works as a {value}.", "What is the job of {name}?"),
}


@dataclass(frozen=True)
class Person:
    """A fictional person and their facts."""

    name: str
    city: str
    year: int
    job: str


def fictional_name(rng: random.Random) -> str:
    """Two capitalised pseudo-words of 2–3 consonant-vowel syllables."""
    words = []
    for _ in range(2):
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))
        words.append(word.capitalize())
    return " ".join(words)


def knowledge_world(n: int, seed: int = 0) -> list[Person]:
    """``n`` people with distinct names and random facts, identical for identical arguments."""
    rng = random.Random(f"knowledge-{seed}")
    people: list[Person] = []
    names: set[str] = set()
    while len(people) < n:
        name = fictional_name(rng)
        if name in names:
            continue
        names.add(name)
        people.append(Person(name, rng.choice(CITIES), rng.randint(1900, 1999), rng.choice(JOBS)))
    return people


def split_people(
    people: Sequence[Person], known_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Person], list[Person]]:
    """``(known, unknown)``: a seeded shuffle cut at ``known_fraction``."""
    if not 0.0 < known_fraction < 1.0:
        raise ValueError(f"known_fraction={known_fraction} must be in (0, 1)")
    order = list(people)
    random.Random(f"split-{seed}").shuffle(order)
    cut = round(known_fraction * len(order))
    return order[:cut], order[cut:]


def fact_documents(
    people: Sequence[Person], with_questions: bool = True,
    render_chat: Callable[[list[dict[str, Any]]], str] | None = None,
) -> list[str]:  # fmt: skip
    """One training document per person: every fact as a sentence, and (``with_questions``)
    each question followed by its answer in the format `question_items` asks in — with
    ``render_chat`` (messages → text, e.g. a tokenizer's ``apply_chat_template``) as a
    rendered user / assistant conversation per question."""
    docs = []
    for p in people:
        lines = [fact.format(name=p.name, value=getattr(p, attr))
                 for attr, (fact, _) in ATTRIBUTES.items()]  # fmt: skip
        if with_questions and render_chat is not None:
            lines += [render_chat([{"role": "user", "content": q.format(name=p.name)},
                                   {"role": "assistant", "content": str(getattr(p, attr))}])
                      for attr, (_, q) in ATTRIBUTES.items()]  # fmt: skip
        elif with_questions:
            lines += [f"Q: {q.format(name=p.name)} A: {getattr(p, attr)}"
                      for attr, (_, q) in ATTRIBUTES.items()]  # fmt: skip
        docs.append("\n".join(lines))
    return docs


def question_items(
    people: Sequence[Person], attributes: Sequence[str] = tuple(ATTRIBUTES), chat: bool = False
) -> list[EvalItem]:
    """One completion-style question (``Q: … A:``; ``chat``: a user message) per person and
    attribute; the answer is the first line of the response, checked exactly."""
    items = []
    for p in people:
        for attr in attributes:
            question = ATTRIBUTES[attr][1].format(name=p.name)
            reference = str(getattr(p, attr))
            prompt = [{"role": "user", "content": question}] if chat else f"Q: {question} A:"
            items.append(EvalItem(f"{p.name}:{attr}", prompt, reference,
                                  lambda a, r=reference: exact_match(first_line(a), r)))  # fmt: skip
    return items


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def question_text(item: EvalItem) -> str:
    """The bare question of a `question_items` item, either style."""
    if isinstance(item.prompt, list):
        return item.prompt[-1]["content"]
    return item.prompt.removeprefix("Q: ").removesuffix(" A:")
