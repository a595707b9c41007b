"""The command layer: one module per ``lmforge <command>``, each with ``add_parser(subparsers)``
(flags, help, examples) and ``run(args) -> int`` (flags → a typed config → one library
call). Nothing in the library imports this package; `lmforge.cli` builds the parser from
`COMMANDS`, in this order (the order of ``lmforge --help``)."""

from lmforge.commands import (
    chat,
    convert,
    demo,
    dpo,
    generate,
    grpo,
    info,
    merge,
    ppo,
    pretrain,
    rm,
    serve,
    sft,
    tokenizer,
)
from lmforge.commands.common import CommandError

COMMANDS = (
    tokenizer,
    info,
    convert,
    generate,
    demo,
    serve,
    chat,
    pretrain,
    sft,
    merge,
    dpo,
    rm,
    grpo,
    ppo,
)

__all__ = ["COMMANDS", "CommandError"]
