"""`lmforge merge`: a LoRA / DoRA adapter folded into its base model
(`lmforge.peft.merging.load_merged`), or a weight average of models fine-tuned from one start
(a model soup, `lmforge.models.average.load_averaged`), written as an HF checkpoint.

    lmforge merge --base ckpt/ --adapter runs/sft-lora/model --out merged/ [--force]
    lmforge merge --average runs/rl-s0/model runs/rl-s1/model --out soup/ [--weights 1 1]
        [--base runs/sft/model --alpha 1.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.commands.common import CommandError, model_folder, subparser
from lmforge.io import atomic_write_text
from lmforge.models.average import load_averaged
from lmforge.models.hf import save_model
from lmforge.peft.io import read_adapter_config
from lmforge.peft.merging import adapter_base, load_merged
from lmforge.tokenizer import load_tokenizer

PREPROCESSOR = "preprocessor_config.json"


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "merge",
        "merge a LoRA / DoRA adapter into its base model, or average fine-tuned models, and "
        "write an HF checkpoint",
        "  lmforge merge --base ckpt/ --adapter runs/sft-lora/model --out merged/\n"
        "  lmforge merge --base ckpt/ --adapter peft-adapter/ --out merged-bf16/ --dtype bfloat16\n"
        "  lmforge merge --adapter runs/sft-lora/model --out merged/ --force\n"
        "  lmforge merge --average runs/rl-s0/model runs/rl-s1/model runs/rl-s2/model --out soup/\n"
        "  lmforge merge --average a/ b/ --weights 1 3 --base runs/sft/model --alpha 1.5 --out soup/\n\n"
        "Without --base, the adapter's recorded base (base_model_name_or_path) is used; it may\n"
        "be a Hub id in the local Hugging Face cache. --average writes sum_i w_i theta_i (w: 1/n,\n"
        "or --weights normalised); with --alpha, base + alpha * (soup - base) (--base: the\n"
        "models' shared start). A non-empty --out needs --force.",
    )
    p.add_argument(
        "--base", metavar="DIR",
        help="HF base checkpoint folder or cached Hub id (default: the adapter's recorded base); "
        "with --average, the models' shared start that --alpha scales from",
    )  # fmt: skip
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--adapter", metavar="DIR", help="adapter folder (PEFT format)")
    what.add_argument("--average", nargs="+", metavar="DIR",
                      help="HF checkpoint folders of one architecture to average (a model soup)")  # fmt: skip
    p.add_argument("--weights", nargs="+", type=float, metavar="W",
                   help="with --average: one weight per folder (normalised; default equal)")  # fmt: skip
    p.add_argument("--alpha", type=float, default=1.0,
                   help="with --average and --base: base + alpha * (soup - base) (default 1)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.average:
        return run_average(args)
    if args.weights or args.alpha != 1.0:
        raise CommandError("--weights and --alpha go with --average (a soup of models)")
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


def run_average(args: argparse.Namespace) -> int:
    """The soup of ``--average`` (scaled from ``--base`` by ``--alpha``), with the first
    folder's tokenizer and image-processor config beside it."""
    folders = [model_folder(f) for f in args.average]
    start = model_folder(args.base) if args.base else None
    if args.alpha != 1.0 and start is None:
        raise CommandError(
            f"--alpha {args.alpha} scales the soup from the models' start: give --base"
        )
    out = Path(args.out)
    check_out(out, args.force, {**{f"--average {f}": f for f in folders},
                                **({"--base": start} if start else {})})  # fmt: skip
    try:
        model = load_averaged(folders, args.weights, start, args.alpha)
    except ValueError as e:  # CheckpointError too: names the folder and tensor
        raise CommandError(str(e)) from e
    first = folders[0]
    tokenizer = load_tokenizer(first) if (first / "tokenizer.json").is_file() else None
    save_model(model, out, tokenizer=tokenizer, dtype=args.dtype)
    if (first / PREPROCESSOR).is_file():  # a VLM's image processor
        atomic_write_text(out / PREPROCESSOR, (first / PREPROCESSOR).read_text())
    print(f"averaged {len(folders)} models -> {out}")
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
