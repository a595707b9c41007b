"""What the commands share: `CommandError`, the subparser factory, ``--config/--out/
overrides`` → a typed config, and the ``--peft`` flags → `PeftSettings`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from lmforge.peft.settings import DEFAULT_LORA_TARGETS, METHODS, QUANT_METHODS, PeftSettings
from lmforge.train.config import RunConfig, load_config


class CommandError(ValueError):
    """A problem with the command's arguments or inputs; the message says what to fix."""


def subparser(subparsers: Any, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    """A command's parser: ``help`` as its description, ``examples`` as its epilog."""
    return subparsers.add_parser(
        name,
        help=help,
        description=help,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ---------------------------------------------------------------------- recipes
def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """``--config FILE``, ``--out DIR`` and ``KEY=VALUE`` overrides."""
    p.add_argument("--config", required=True, metavar="FILE", help="YAML recipe")
    p.add_argument("--out", metavar="DIR", help="run folder (out_dir)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-3")


def add_model_and_data_arguments(p: argparse.ArgumentParser, data_help: str) -> None:
    """``--model DIR`` (model.init_from) and ``--data FILE…`` (data.paths)."""
    p.add_argument("--model", metavar="DIR", help="HF checkpoint folder (model.init_from)")
    p.add_argument("--data", nargs="+", metavar="FILE", help=data_help)


def run_config(
    args: argparse.Namespace, cls: type[RunConfig] = RunConfig, extra: Sequence[str] = ()
) -> RunConfig:
    """``--config`` with the overrides, then ``--out``, ``--model``, ``--data`` (when the
    command has them and they are given), then ``extra``, validated into ``cls``."""
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    if getattr(args, "model", None):
        overrides.append(f"model.init_from={json.dumps(args.model)}")
    if getattr(args, "data", None):
        overrides.append(f"data.paths={json.dumps(args.data)}")
    return load_config(args.config, overrides + list(extra), cls)


# ---------------------------------------------------------------------- peft
def add_peft_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--peft`` options (`peft_settings` reads them)."""
    g = p.add_argument_group("parameter-efficient fine-tuning (trains and saves only the adapter)")
    g.add_argument("--peft", choices=METHODS, help="train an adapter instead of all weights")
    g.add_argument("--lora-r", type=int, default=16, metavar="R", help="LoRA rank (16)")
    g.add_argument("--lora-alpha", type=float, default=32.0, metavar="A", help="LoRA α (32)")
    g.add_argument("--lora-dropout", type=float, default=0.0, metavar="P", help="(0)")
    g.add_argument(
        "--lora-targets",
        default=DEFAULT_LORA_TARGETS,
        metavar="NAMES",
        help="comma-separated module names, or all-linear (default: every block projection)",
    )
    g.add_argument("--rslora", action="store_true", help="scale by α/√r (rsLoRA)")
    g.add_argument("--virtual-tokens", type=int, default=20, metavar="N",
                   help="prefix / prompt length (20)")  # fmt: skip
    g.add_argument("--bottleneck", type=int, default=16, metavar="M",
                   help="bottleneck adapter width (16)")  # fmt: skip
    g.add_argument("--quantize", choices=QUANT_METHODS,
                   help="QLoRA: quantise the frozen base (with --peft lora): nf4 / fp4 / int8 "
                        "by bitsandbytes, int4 (and int8 without it) by torchao")  # fmt: skip
    g.add_argument("--quant-compute-dtype", choices=["bfloat16", "float16", "float32"],
                   default="bfloat16",
                   help="dtype nf4/fp4 weights are dequantised to (bfloat16)")  # fmt: skip


def peft_settings(args: argparse.Namespace) -> PeftSettings:
    """The ``--peft`` options as `PeftSettings` (``method=None`` without ``--peft``)."""
    return PeftSettings(
        method=args.peft,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=args.lora_targets,
        rslora=args.rslora,
        virtual_tokens=args.virtual_tokens,
        bottleneck=args.bottleneck,
        quantize=args.quantize,
        quant_compute_dtype=args.quant_compute_dtype,
    )
