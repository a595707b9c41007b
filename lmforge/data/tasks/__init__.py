"""Synthetic, verifiable data generated on the spot: nothing is downloaded.

| module | what |
|---|---|
| `corpus` | seeded simple-English corpus: stories, facts, arithmetic |
| `chat` | seeded synthetic chats a tiny model can learn to answer |
| `arithmetic` | multi-digit arithmetic problems with exact answers and a held-out split |
| `countdown` | Countdown problems and an exact verifier (parsed with ast, never eval) |
"""

from lmforge.data.tasks.arithmetic import arithmetic_problems, check_arithmetic
from lmforge.data.tasks.chat import synthetic_chats, write_chat_jsonl
from lmforge.data.tasks.corpus import synthetic_corpus
from lmforge.data.tasks.countdown import check_countdown, countdown_problems

__all__ = [
    "arithmetic_problems",
    "check_arithmetic",
    "check_countdown",
    "countdown_problems",
    "synthetic_chats",
    "synthetic_corpus",
    "write_chat_jsonl",
]
