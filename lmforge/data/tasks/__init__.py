"""Synthetic, verifiable data generated on the spot: nothing is downloaded."""

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
