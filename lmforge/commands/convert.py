"""`lmforge convert`: rewrite a checkpoint in another dtype and/or shard size, or quantise
its weights (int8 per channel, int4 per group; `lmforge.models.quantize`), tokenizer files
copied too.

    lmforge convert ckpt/ --out ckpt-bf16/ --dtype bfloat16 --max-shard-size 2GB
    lmforge convert ckpt/ --out ckpt-int8/ --quantize int8
    lmforge convert ckpt/ --out ckpt-int4/ --quantize int4 --group-size 64
    lmforge convert ckpt-int8/ --out ckpt-fp32/      # dequantise: transformers loads this one

A quantised folder loads back in lmforge (`load_model`), quantised; transformers cannot
load it (its ``quantization_config`` names lmforge's own method), so converting it again
without ``--quantize`` writes the dequantised weights as a plain checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.commands.common import CommandError, model_folder, subparser
from lmforge.commands.info import human_size
from lmforge.io import atomic_write_bytes, read_json
from lmforge.models.hf import checkpoint_dir, load_model, save_model, weight_files
from lmforge.models.hub import resolve_model_path
from lmforge.models.info import tensor_dtypes
from lmforge.models.quantize import SCHEMES, dequantize_model, quantize_model
from lmforge.nn.quant import INT4_GROUP_SIZES

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


def dtypes_on_disk(files: list[Path]) -> str:
    """The dtypes of a checkpoint's tensors, the most common first (``int8, float32``)."""
    counts: dict[str, int] = {}
    for file in files:
        for dtype in tensor_dtypes(file).values():
            counts[dtype] = counts.get(dtype, 0) + 1
    return ", ".join(sorted(counts, key=counts.get, reverse=True))


def source_folder(name: str) -> Path:
    """The checked source folder: `model_folder`'s checks, except that a weight-only
    quantised folder (integer weights listed in its ``quantization_config``) is accepted —
    `load_model` checks each of its tensors."""
    folder = checkpoint_dir(resolve_model_path(name))
    config = read_json(folder / "config.json", "model config")
    if isinstance(config, dict) and "quantization_config" in config:
        return folder
    return model_folder(name)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "convert",
        "rewrite a checkpoint in another dtype and/or shard size, or quantise it "
        "(tokenizer files copied too)",
        "  lmforge convert ckpt/ --out ckpt-bf16/ --dtype bfloat16\n"
        "  lmforge convert ckpt/ --out ckpt-sharded/ --max-shard-size 500MB\n"
        "  lmforge convert ckpt/ --out ckpt-int8/ --quantize int8\n"
        "  lmforge convert ckpt/ --out ckpt-int4/ --quantize int4 --group-size 64\n"
        "  lmforge convert ckpt-int8/ --out ckpt-fp32/   # dequantise, for transformers",
    )
    p.add_argument("dir", metavar="DIR", help="source HF checkpoint folder (or cached Hub id)")
    p.add_argument("--out", required=True, metavar="DIR2", help="destination folder")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the written weights (default: as stored)",
    )
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 2GB, 500MB (default: 5GB)")
    p.add_argument(
        "--quantize",
        choices=sorted(SCHEMES),
        help="weight-only quantisation of the projections and the LM head: int8 (one scale "
        "per output channel) or int4 (scale and offset per group); lmforge loads the result, "
        "transformers does not",
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=64,
        help="int4: input columns per group (32, 64, 128, 256)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    src, out = source_folder(args.dir), Path(args.out)
    if out.resolve() == src.resolve():
        raise CommandError(f"{out}: --out must be a different folder from the source")
    if args.quantize == "int4" and args.group_size not in INT4_GROUP_SIZES:
        raise CommandError(f"--group-size {args.group_size}: must be one of {INT4_GROUP_SIZES}")
    model = load_model(src)
    if getattr(model, "quantization_config", None) is not None:
        dequantize_model(model)  # re-quantising starts from the dequantised weights
    if args.quantize:
        quantize_model(model, args.quantize, group_size=args.group_size)
    save_model(model, out, dtype=args.dtype, max_shard_size=args.max_shard_size)
    copied = []
    for name in SIDE_FILES:  # the source's generation_config replaces the minimal one written
        if (src / name).is_file():
            atomic_write_bytes(out / name, (src / name).read_bytes())
            copied.append(name)
    files = weight_files(out)
    print(
        f"wrote {out}: {dtypes_on_disk(files)}, {len(files)} weight file(s), "
        f"{human_size(sum(f.stat().st_size for f in files))}"
    )
    print(f"copied: {', '.join(copied) if copied else 'nothing (no tokenizer files)'}")
    return 0
