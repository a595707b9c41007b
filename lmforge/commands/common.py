"""What the commands share: `CommandError`, the parser class and subparser factory,
``--config/--out/--print-config/KEY=VALUE`` → a typed config (built-in recipes when there is
no ``--config``), model folders (local or a cached Hub id) checked before loading, and the
``--peft`` flags → `PeftSettings`.

``KEY=VALUE`` overrides parse wherever they stand on the command line: `CommandParser` takes
every token shaped ``section.key=value`` that is not the value of an option out of the
options (so ``--data a.jsonl b.jsonl train.max_steps=5`` stops ``--data`` at the override)
and hands them, in order, to the ``overrides`` positional.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.models.hf import checkpoint_dir
from lmforge.models.hub import ModelNotFoundError, resolve_model_path
from lmforge.models.info import check_weight_dtypes
from lmforge.peft.settings import DEFAULT_LORA_TARGETS, METHODS, QUANT_METHODS, PeftSettings
from lmforge.train.config import RunConfig, dump_config, load_config

# The recipes shipped inside the package (``recipes/`` at the repository root links here).
RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
# ``section.key=value`` (a key path of identifiers; a file name like ``./a=b.jsonl`` is not).
OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


class CommandError(ValueError):
    """A problem with the command's arguments or inputs; the message says what to fix."""


class CommandDone(Exception):  # noqa: N818 - not an error: the command finished early
    """The command has done all it was asked (e.g. ``--print-config``); exit with ``code``."""

    def __init__(self, code: int = 0) -> None:
        super().__init__(code)
        self.code = code


class CommandParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose ``overrides`` positional (when it has one) takes
    every ``KEY=VALUE`` token wherever it stands, and whose ``nargs="+"`` options (``--data``)
    stop at the first of them."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        moved = self.move_overrides(args)
        namespace, extras = super().parse_known_args(moved, namespace)
        if moved is not args and extras:
            extras = self.unrecognized(namespace, extras)
        return namespace, extras

    def unrecognized(self, namespace: argparse.Namespace, extras: list[str]) -> list[str]:
        """``extras`` without the ``--`` `move_overrides` inserted, nor the overrides an
        unknown option stranded behind it (so the error names only what is unknown);
        stranded overrides with nothing else unknown go back to ``namespace.overrides``."""
        stranded = [t for t in extras if OVERRIDE.match(t)]
        unknown = [t for t in extras if t != "--" and not OVERRIDE.match(t)]
        if not unknown:
            namespace.overrides = [*(getattr(namespace, "overrides", None) or []), *stranded]
        return unknown

    def move_overrides(self, args: list[str]) -> list[str]:
        """``args`` with the override tokens moved, in order, behind a ``--``."""
        if not any(a.dest == "overrides" and not a.option_strings for a in self._actions):
            return args
        kept: list[str] = []
        overrides: list[str] = []
        i = 0
        while i < len(args):
            token = args[i]
            i += 1
            if token == "--":  # everything after it is positional: the overrides
                overrides.extend(args[i:])
                break
            if OVERRIDE.match(token):
                overrides.append(token)
                continue
            kept.append(token)
            action = self.option_action(token)
            if action is None or (token.startswith("--") and "=" in token):
                continue
            taken = self.values_taken(action.nargs, args[i:])
            kept.extend(args[i : i + taken])
            i += taken
        return kept + (["--", *overrides] if overrides else [])

    def option_action(self, token: str) -> argparse.Action | None:
        """The option ``token`` names (exactly or by an unambiguous prefix), else None."""
        if not token.startswith("-") or token == "-" or self.is_negative_number(token):
            return None
        name = token.split("=", 1)[0] if token.startswith("--") else token
        if name in self._option_string_actions:
            return self._option_string_actions[name]
        found = {a for s, a in self._option_string_actions.items() if s.startswith(name)}
        return found.pop() if len(found) == 1 and name.startswith("--") else None

    def values_taken(self, nargs: Any, rest: list[str]) -> int:
        """How many of the tokens ``rest`` an option with ``nargs`` consumes as values."""
        if nargs is None:
            return min(1, len(rest))
        if isinstance(nargs, int):
            return min(nargs, len(rest))
        if nargs in (argparse.REMAINDER, argparse.PARSER):
            return len(rest)
        count = 0
        for token in rest:
            if token == "--" or OVERRIDE.match(token) or self.option_action(token) is not None:
                break
            if token.startswith("-") and not self.is_negative_number(token) and len(token) > 1:
                break
            count += 1
            if nargs == argparse.OPTIONAL:
                break
        return count

    def is_negative_number(self, token: str) -> bool:
        return bool(self._negative_number_matcher.match(token)) and not (
            self._has_negative_number_optionals
        )


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
def default_recipe(command: str) -> Path | None:
    """The built-in recipe of ``command`` (``lmforge/recipes/<command>-tiny.yaml``), if any."""
    path = RECIPES_DIR / f"{command}-tiny.yaml"
    return path if path.is_file() else None


def recipe_path(config: str | None, command: str) -> Path | None:
    """The recipe a run reads: ``--config`` (a missing ``recipes/NAME.yaml`` falls back to
    the built-in recipe of that name, so examples work from any folder), else the command's
    built-in recipe, else None (the config's built-in defaults)."""
    if config is None:
        return default_recipe(command)
    path = Path(config)
    if not path.exists() and path.parent.name == "recipes" and (RECIPES_DIR / path.name).is_file():
        return RECIPES_DIR / path.name
    return path


def add_recipe_arguments(p: argparse.ArgumentParser, recipe: str | None = None) -> None:
    """``--config FILE`` (default: the built-in recipe of ``recipe``, else of the command),
    ``--out DIR``, ``--print-config`` and ``KEY=VALUE`` overrides."""
    command = recipe or p.prog.split()[-1]
    default = default_recipe(command)
    where = f"the built-in recipes/{default.name}" if default else "the built-in defaults"
    p.add_argument("--config", metavar="FILE", help=f"YAML recipe (default: {where})")
    p.add_argument("--out", metavar="DIR", help="run folder (out_dir)")
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config (YAML) and exit"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="e.g. optim.lr=1e-3 (anywhere on the line; YAML values)",
    )  # fmt: skip
    p.set_defaults(recipe=command)


def add_model_and_data_arguments(
    p: argparse.ArgumentParser, data_help: str, model_help: str = "HF checkpoint folder"
) -> None:
    """``--model DIR`` (model.init_from) and ``--data FILE…`` (data.paths)."""
    p.add_argument(
        "--model", metavar="DIR", help=model_help + " or a Hub id in the local HF cache "
        "(model.init_from)",
    )  # fmt: skip
    p.add_argument(
        "--data", nargs="+", metavar="FILE", help=data_help + "; stops at the first KEY=VALUE"
    )


def run_config(
    args: argparse.Namespace, cls: type[RunConfig] = RunConfig, extra: Sequence[str] = ()
) -> RunConfig:
    """``--config`` (default: the command's built-in recipe) with the overrides, then
    ``--out``, ``--model``, ``--data`` (when the command has them and they are given), then
    ``extra``, validated into ``cls``; ``model.init_from`` given as a Hub id becomes its
    folder in the local HF cache. With ``--print-config``: print it and stop (`CommandDone`)."""
    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "out", None):
        overrides.append(f"out_dir={json.dumps(args.out)}")
    if getattr(args, "model", None):
        overrides.append(f"model.init_from={json.dumps(args.model)}")
    if getattr(args, "data", None):
        overrides.append(f"data.paths={json.dumps(args.data)}")
    command = getattr(args, "recipe", None) or str(args.command).split()[0]
    recipe = recipe_path(getattr(args, "config", None), command)
    config = load_config(recipe, overrides + list(extra), cls)
    printing = getattr(args, "print_config", False)
    model = getattr(config, "model", None)
    if getattr(model, "init_from", None):
        try:
            folder = resolve_model_path(model.init_from)
            if folder != Path(model.init_from):  # a Hub id → its cached snapshot
                model.init_from = str(folder)
        except ModelNotFoundError:
            if not printing:
                raise
    if printing:
        print(dump_config(config), end="")
        raise CommandDone(0)
    return config


def model_folder(name: str | os.PathLike) -> Path:
    """A ``--model`` argument as a checked checkpoint folder: a local folder or a Hub id in
    the local cache, with ``config.json`` and weights of a dtype lmforge loads (headers
    only: a clean error before any tensor is read)."""
    folder = checkpoint_dir(resolve_model_path(name))
    check_weight_dtypes(folder)
    return folder


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
