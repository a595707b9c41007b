"""An embedded, seeded synthetic corpus of simple English: stories, facts and arithmetic.

    >>> docs = synthetic_corpus(1000, seed=0)
    >>> docs[0]                                  # doctest: +SKIP
    'Once upon a time, there was a little fox named Mia. ...'

Nothing is downloaded: every document is drawn from small templates and word lists in this
file, so the same ``(n_docs, seed)`` always gives the same corpus, on any machine. The text is
regular enough that a sub-million-parameter model visibly learns it within a minute on a
laptop CPU (story structure, which animal says what, and sums such as ``12 + 7 = 19``), and
every arithmetic statement in it is true, so a model's answers can be checked.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["DOC_KINDS", "synthetic_corpus"]

NAMES = {
    "Tom": "he", "Lily": "she", "Max": "he", "Anna": "she", "Ben": "he", "Mia": "she",
    "Sam": "he", "Zoe": "she", "Leo": "he", "Emma": "she", "Jack": "he", "Lucy": "she",
}  # fmt: skip
ANIMAL_SOUNDS = {
    "cat": "meow", "dog": "woof", "cow": "moo", "duck": "quack", "sheep": "baa",
    "frog": "ribbit", "owl": "hoot", "pig": "oink", "mouse": "squeak", "horse": "neigh",
}  # fmt: skip
PLACES = ["park", "forest", "beach", "garden", "river", "farm", "hill", "lake"]
_THINGS = {
    "ball": "balls", "box": "boxes", "hat": "hats", "kite": "kites", "book": "books",
    "apple": "apples", "flower": "flowers", "shell": "shells", "boat": "boats", "cake": "cakes",
}  # fmt: skip
_ADJECTIVES = ["red", "blue", "green", "yellow", "big", "small", "shiny", "soft"]
_FEELINGS = ["happy", "sad", "surprised", "excited", "scared", "proud"]
_ACTIVITIES = ["run", "jump", "sing", "swim", "read", "dance", "climb trees", "play games"]
_FACTS = [
    "The sky is blue.", "Grass is green.", "Snow is white.", "The sun is hot.",
    "Ice is cold.", "Fire is hot.", "The moon comes out at night.", "Fish live in water.",
    "Birds can fly.", "A cat has four legs.", "A bird has two wings.", "A spider has eight legs.",
    "A week has seven days.", "A year has twelve months.", "A day has twenty four hours.",
    "Bees make honey.", "Cows give milk.", "Rain falls from clouds.", "Trees have leaves.",
    "Apples grow on trees.", "A triangle has three sides.", "A square has four sides.",
    "Two and two make four.", "Ten is more than five.", "One is less than three.",
]  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def short_story(rng: random.Random) -> str:
    """A short story about one animal and a friend, with a consistent pronoun."""
    name, pronoun = rng.choice(sorted(NAMES.items()))
    friend = rng.choice([n for n in sorted(NAMES) if n != name])
    animal, sound = rng.choice(sorted(ANIMAL_SOUNDS.items()))
    place, thing = rng.choice(PLACES), rng.choice(sorted(_THINGS))
    adjective, feeling = rng.choice(_ADJECTIVES), rng.choice(_FEELINGS)
    subject = pronoun.capitalize()
    middle = [
        f"{name} liked to {rng.choice(_ACTIVITIES)}.",
        f"Every morning, {name} said {sound}.",
        f"{name} lived near the {place}.",
        f"{subject} had a friend named {friend}.",
    ]
    rng.shuffle(middle)
    sentences = [
        f"Once upon a time, there was a little {animal} named {name}.",
        *middle[: rng.randint(1, len(middle))],
        f"One day, {name} went to the {place} and found a {adjective} {thing}.",
        f"{subject} was very {feeling}.",
        f"{name} showed the {thing} to {friend}, and they played all day.",
        "The end.",
    ]
    return " ".join(sentences)


def _facts(rng: random.Random) -> str:
    """Three to six true facts, including what some animals say."""
    facts = rng.sample(_FACTS, rng.randint(2, 4))
    for animal, sound in rng.sample(sorted(ANIMAL_SOUNDS.items()), rng.randint(1, 2)):
        facts.append(f"A {animal} says {sound}.")
    rng.shuffle(facts)
    return " ".join(facts)


def _arithmetic(rng: random.Random) -> str:
    """Four to eight true equations ``a + b = c`` / ``a - b = c`` with operands up to 20."""
    lines = []
    for _ in range(rng.randint(4, 8)):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        if rng.random() < 0.7:
            lines.append(f"{a} + {b} = {a + b}")
        else:
            a, b = max(a, b), min(a, b)
            lines.append(f"{a} - {b} = {a - b}")
    return "\n".join(lines)


def _word_problem(rng: random.Random) -> str:
    """A one-step story sum: someone gains or loses a few things."""
    name, pronoun = rng.choice(sorted(NAMES.items()))
    friend = rng.choice([n for n in sorted(NAMES) if n != name])
    plural = _THINGS[rng.choice(sorted(_THINGS))]
    a, b = rng.randint(2, 12), rng.randint(1, 9)
    if rng.random() < 0.6:
        return (
            f"{name} has {a} {plural}. {friend} gives {name} {b} more. "
            f"Now {name} has {a + b} {plural}."
        )
    a = a + b  # so the answer stays positive
    return f"{name} had {a} {plural}. {pronoun.capitalize()} lost {b}. Now {name} has {a - b} {plural}."


def _counting(rng: random.Random) -> str:
    """Counting up from a small number, or the days of the week in order."""
    if rng.random() < 0.7:
        start, length = rng.randint(1, 15), rng.randint(5, 10)
        return "Let us count: " + ", ".join(str(i) for i in range(start, start + length)) + "."
    start = rng.randrange(len(DAYS))
    days = [DAYS[(start + i) % len(DAYS)] for i in range(rng.randint(3, 7))]
    return f"After {days[0]} comes {days[1]}. " + "The days go: " + ", ".join(days) + "."


# Kind name -> (generator, relative weight).
DOC_KINDS: dict[str, tuple[Callable[[random.Random], str], float]] = {
    "story": (short_story, 0.35),
    "facts": (_facts, 0.15),
    "arithmetic": (_arithmetic, 0.25),
    "word_problem": (_word_problem, 0.15),
    "counting": (_counting, 0.10),
}


def synthetic_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """``n_docs`` synthetic English-like documents, identical for identical ``(n_docs, seed)``.

    Kinds are mixed by the weights in `DOC_KINDS`: short stories, true facts, arithmetic
    (``12 + 7 = 19``, one equation per line), word problems and counting. A corpus is a
    prefix of any longer corpus with the same seed.
    """
    if not isinstance(n_docs, int) or isinstance(n_docs, bool) or n_docs < 0:
        raise ValueError(f"n_docs={n_docs!r} must be an integer ≥ 0")
    rng = random.Random(seed)
    makers = [make for make, _ in DOC_KINDS.values()]
    weights = [weight for _, weight in DOC_KINDS.values()]
    return [rng.choices(makers, weights)[0](rng) for _ in range(n_docs)]
