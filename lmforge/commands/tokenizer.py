"""`lmforge tokenizer train`: a byte-level BPE tokenizer trained on .txt / .jsonl files,
saved in HF format (`lmforge.data.tokenizer_training.train_tokenizer_on_files`).

    lmforge tokenizer train --input corpus/ --vocab-size 4096 --out tok/
"""

from __future__ import annotations

import argparse
from typing import Any

from lmforge.commands.common import subparser


def add_parser(subparsers: Any) -> None:
    group = subparsers.add_parser("tokenizer", help="train byte-level BPE tokenizers")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = subparser(
        actions,
        "train",
        "train a byte-level BPE tokenizer on .txt / .jsonl files and save it in HF format",
        "  lmforge tokenizer train --input notes.txt --vocab-size 4096 --out tok/\n"
        "  lmforge tokenizer train --input corpus/ extra.jsonl --vocab-size 32000 --out tok/\n\n"
        "A .txt file gives one document per blank-line-separated paragraph (or per file with\n"
        "--txt-docs file); .jsonl / .json / Parquet: every text field of each record.\n"
        "Folders are searched recursively for .txt and .jsonl files.",
    )
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files or folders")
    p.add_argument("--vocab-size", type=int, required=True, metavar="N", help="target vocab size")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--min-frequency", type=int, default=2, metavar="N", help="default: 2")
    p.add_argument("--text-field", default="text", help="JSONL field to read (default: text)")
    p.add_argument(
        "--txt-docs",
        choices=("paragraph", "file"),
        default="paragraph",
        help="what one document is in a .txt file (default: paragraph)",
    )
    p.set_defaults(run=run, command="tokenizer train")


def run(args: argparse.Namespace) -> int:
    from lmforge.data.tokenizer_training import train_tokenizer_on_files

    tok, num_docs, files = train_tokenizer_on_files(
        args.input,
        args.vocab_size,
        min_frequency=args.min_frequency,
        text_field=args.text_field,
        txt_docs=args.txt_docs,
    )
    tok.save(args.out)
    print(
        f"trained a tokenizer with {tok.vocab_size} ids on {num_docs} documents "
        f"from {len(files)} file(s) -> {args.out}"
    )
    if tok.vocab_size < args.vocab_size:
        print(f"note: the data supports only {tok.vocab_size} of the {args.vocab_size} ids asked")
    return 0
