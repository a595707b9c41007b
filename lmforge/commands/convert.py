"""`lmforge convert`: rewrite a checkpoint in another dtype and/or shard size, tokenizer
files copied too.

    lmforge convert ckpt/ --out ckpt-bf16/ --dtype bfloat16 --max-shard-size 2GB
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.commands.common import CommandError, model_folder, subparser
from lmforge.commands.info import human_size
from lmforge.io import atomic_write_bytes
from lmforge.models.hf import load_model, save_model
from lmforge.models.info import checkpoint_info

# Files besides the weights that make a checkpoint usable; `convert` copies them across.
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "convert",
        "rewrite a checkpoint in another dtype and/or shard size (tokenizer files copied too)",
        "  lmforge convert ckpt/ --out ckpt-bf16/ --dtype bfloat16\n"
        "  lmforge convert ckpt/ --out ckpt-sharded/ --max-shard-size 500MB",
    )
    p.add_argument("dir", metavar="DIR", help="source HF checkpoint folder (or cached Hub id)")
    p.add_argument("--out", required=True, metavar="DIR2", help="destination folder")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the written weights (default: as stored)",
    )
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 2GB, 500MB (default: 5GB)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    src, out = model_folder(args.dir), Path(args.out)
    if out.resolve() == src.resolve():
        raise CommandError(f"{out}: --out must be a different folder from the source")
    model = load_model(src)
    save_model(model, out, dtype=args.dtype, max_shard_size=args.max_shard_size)
    copied = []
    for name in SIDE_FILES:  # the source's generation_config replaces the minimal one written
        if (src / name).is_file():
            atomic_write_bytes(out / name, (src / name).read_bytes())
            copied.append(name)
    info = checkpoint_info(out)
    print(
        f"wrote {out}: {info['dtype_on_disk']}, {len(info['weight_files'])} weight file(s), "
        f"{human_size(sum(f['bytes'] for f in info['weight_files']))}"
    )
    print(f"copied: {', '.join(copied) if copied else 'nothing (no tokenizer files)'}")
    return 0
