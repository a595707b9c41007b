"""`lmforge <command>`: the command-line interface (also ``python -m lmforge``).

    lmforge tokenizer train --input corpus/ --vocab-size 4096 --out tok/
    lmforge info ckpt/ --json
    lmforge convert ckpt/ --out ckpt-bf16/ --dtype bfloat16 --max-shard-size 2GB
    lmforge generate --model ckpt/ --prompt "Once upon a time" --chat --greedy
    lmforge demo --out runs/demo --seed 0
    lmforge pretrain --config recipes/pretrain-tiny.yaml train.max_steps=500
    lmforge sft --model ckpt/ --data chat.jsonl train.max_steps=200 --print-config
    lmforge serve --model ckpt/ --port 8000 --api-key KEY
    lmforge chat --model ckpt/ --temperature 0.7

Bad input (a missing path, a folder that is not a checkpoint, an invalid config, tokenizer
or data file) prints one line ``lmforge <command>: error: ...`` to stderr and exits with
status 2, never a traceback. ``lmforge --version`` prints the version.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from safetensors import SafetensorError

from lmforge import __version__
from lmforge.commands import COMMANDS
from lmforge.commands.common import CommandDone, CommandParser

# What a user can get wrong: reported as one line and exit status 2.
USER_ERRORS = (ValueError, OSError, SafetensorError, FloatingPointError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lmforge`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error argparse has already printed (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.run(args) or 0
    except CommandDone as done:  # e.g. --print-config
        return done.code
    except USER_ERRORS as exc:
        print(f"lmforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {args.command}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The ``lmforge`` argument parser with every subcommand (`lmforge.commands.COMMANDS`)."""
    parser = CommandParser(
        prog="lmforge",
        description="Forge language models end to end: tokenizer, training, inference.",
        epilog="examples:\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line())
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def version_line() -> str:
    """``lmforge 0.1.0 (Python 3.11.7, torch 2.x)``."""
    import platform

    import torch

    return f"lmforge {__version__} (Python {platform.python_version()}, torch {torch.__version__})"
