"""`lmforge merge`: a LoRA / DoRA adapter folded into its base model, written as an HF
checkpoint (`lmforge.peft.merging.load_merged`).

    lmforge merge --base ckpt/ --adapter runs/sft-lora/model --out merged/
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.commands.common import subparser
from lmforge.models.hf import checkpoint_dir, save_model
from lmforge.peft.merging import load_merged
from lmforge.tokenizer import load_tokenizer


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "merge",
        "merge a LoRA / DoRA adapter into its base model and write an HF checkpoint",
        "  lmforge merge --base ckpt/ --adapter runs/sft-lora/model --out merged/\n"
        "  lmforge merge --base ckpt/ --adapter peft-adapter/ --out merged/ --dtype bfloat16",
    )
    p.add_argument("--base", required=True, metavar="DIR", help="HF base checkpoint folder")
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder (PEFT format)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    base = checkpoint_dir(args.base)
    model = load_merged(base, Path(args.adapter))
    tokenizer = None
    for source in (Path(args.adapter), base):
        if (source / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(source)
            break
    save_model(model, args.out, tokenizer=tokenizer, dtype=args.dtype)
    print(f"merged {args.adapter} into {base} -> {args.out}")
    return 0
