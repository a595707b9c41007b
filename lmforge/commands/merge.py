"""`lmforge merge`: a LoRA / DoRA adapter folded into its base model, written as an HF
checkpoint (`lmforge.peft.merging.load_merged`).

    lmforge merge --base ckpt/ --adapter runs/sft-lora/model --out merged/ [--force]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.commands.common import CommandError, model_folder, subparser
from lmforge.models.hf import save_model
from lmforge.peft.io import read_adapter_config
from lmforge.peft.merging import adapter_base, load_merged
from lmforge.tokenizer import load_tokenizer


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "merge",
        "merge a LoRA / DoRA adapter into its base model and write an HF checkpoint",
        "  lmforge merge --base ckpt/ --adapter runs/sft-lora/model --out merged/\n"
        "  lmforge merge --base ckpt/ --adapter peft-adapter/ --out merged-bf16/ --dtype bfloat16\n"
        "  lmforge merge --adapter runs/sft-lora/model --out merged/ --force\n\n"
        "Without --base, the adapter's recorded base (base_model_name_or_path) is used; it may\n"
        "be a Hub id in the local Hugging Face cache. A non-empty --out needs --force.",
    )
    p.add_argument(
        "--base", metavar="DIR",
        help="HF base checkpoint folder or cached Hub id (default: the adapter's recorded base)",
    )  # fmt: skip
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder (PEFT format)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    adapter, out = Path(args.adapter), Path(args.out)
    read_adapter_config(adapter)  # a clean error for a folder that is not an adapter
    base = model_folder(args.base or adapter_base(adapter))
    check_out(out, args.force, {"--base": base, "--adapter": adapter})
    model = load_merged(base, adapter)
    tokenizer = None
    for source in (adapter, base):
        if (source / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(source)
            break
    save_model(model, out, tokenizer=tokenizer, dtype=args.dtype)
    print(f"merged {adapter} into {base} -> {out}")
    return 0


def check_out(out: Path, force: bool, inputs: dict[str, Path]) -> None:
    """Refuse an ``--out`` that is one of the inputs, a file, or (without ``--force``) a
    folder with something in it."""
    for flag, path in inputs.items():
        if out.exists() and out.resolve() == path.resolve():
            raise CommandError(f"{out}: --out is the {flag} folder; write elsewhere")
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out}: --out exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CommandError(
            f"{out}: --out is not empty; pass --force to overwrite it, or choose another folder"
        )
