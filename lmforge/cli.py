"""`lmforge <command>`: the command-line interface (also ``python -m lmforge``).

    lmforge tokenizer train --input corpus/ --vocab-size 4096 --out tok/
    lmforge info ckpt/ [--json]
    lmforge convert ckpt/ --out ckpt-bf16/ --dtype bfloat16 --max-shard-size 2GB
    lmforge generate --model ckpt/ --prompt "Once upon a time" [--chat] [--greedy]
    lmforge demo [--out runs/demo] [--seed 0]
    lmforge pretrain --config recipes/pretrain-tiny.yaml [key=value ...]
    lmforge sft --config recipes/sft-tiny.yaml --model ckpt/ --data chat.jsonl
    lmforge serve --model ckpt/ [--port 8000] [--api-key KEY]
    lmforge chat --model ckpt/ [--temperature 0.7]

Bad input (a missing path, a folder that is not a checkpoint, an invalid config, tokenizer
or data file) prints one line ``lmforge <command>: error: ...`` to stderr and exits with
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from lmforge.config import ModelConfig
from lmforge.data.sources import input_files, read_documents
from lmforge.io import atomic_write_bytes, read_json

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
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
# What a user can get wrong: reported as one line and exit status 2.
_USER_ERRORS = (ValueError, OSError, SafetensorError, FloatingPointError)


class CommandError(ValueError):
    """A problem with the command's arguments or inputs; the message says what to fix."""


# ---------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lmforge`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error argparse has already printed (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.run(args) or 0
    except _USER_ERRORS as exc:
        print(f"lmforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {args.command}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The ``lmforge`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Forge language models end to end: tokenizer, training, inference.",
        epilog="examples:\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_tokenizer(commands)
    _add_info(commands)
    _add_convert(commands)
    _add_generate(commands)
    _add_demo(commands)
    _add_serve(commands)
    from lmforge.train.commands import add_train_commands

    add_train_commands(commands, _subparser)
    from lmforge.peft.commands import add_merge_command

    add_merge_command(commands, _subparser)
    from lmforge.align.preference_commands import add_preference_commands  # dpo, rm

    add_preference_commands(commands, _subparser)
    from lmforge.align.grpo_commands import add_grpo_commands

    add_grpo_commands(commands, _subparser)
    from lmforge.align.ppo_commands import add_ppo_commands

    add_ppo_commands(commands, _subparser)
    return parser


def _add_serve(commands) -> None:
    from lmforge.serve.commands import add_commands  # `serve` and `chat`

    add_commands(commands, _subparser)


def _subparser(commands, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=help,
        description=help,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ---------------------------------------------------------------------- tokenizer train
def _add_tokenizer(commands) -> None:
    group = commands.add_parser("tokenizer", help="train byte-level BPE tokenizers")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _subparser(
        actions,
        "train",
        "train a byte-level BPE tokenizer on .txt / .jsonl files and save it in HF format",
        "  lmforge tokenizer train --input notes.txt --vocab-size 4096 --out tok/\n"
        "  lmforge tokenizer train --input corpus/ extra.jsonl --vocab-size 32000 --out tok/\n\n"
        "A .txt file gives one document per blank-line-separated paragraph (or per file with\n"
        "--txt-docs file); a .jsonl file one document per line, from its 'text' field.\n"
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
    p.set_defaults(run=_run_tokenizer_train, command="tokenizer train")


def _run_tokenizer_train(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import Tokenizer

    files = input_files(args.input)
    counts = {"docs": 0}

    def texts() -> Iterator[str]:
        for file in files:
            for doc in read_documents(file, args.text_field, args.txt_docs):
                counts["docs"] += 1
                yield doc

    tok = Tokenizer.train(texts(), vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    if counts["docs"] == 0:
        raise CommandError(f"no documents found in {', '.join(map(str, files))}")
    tok.save(args.out)
    print(
        f"trained a tokenizer with {tok.vocab_size} ids on {counts['docs']} documents "
        f"from {len(files)} file(s) -> {args.out}"
    )
    if tok.vocab_size < args.vocab_size:
        print(f"note: the data supports only {tok.vocab_size} of the {args.vocab_size} ids asked")
    return 0


# ---------------------------------------------------------------------- info
def _add_info(commands) -> None:
    p = _subparser(
        commands,
        "info",
        "summarise a checkpoint: architecture, parameters, memory, dtype, shards",
        "  lmforge info runs/demo/model\n  lmforge info ckpt/ --json | jq .parameters",
    )
    p.add_argument("dir", metavar="DIR", help="HF-format checkpoint folder")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    info = checkpoint_info(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info
    heads = f"{c['attention_heads']} query / {c['kv_heads']} key-value ({c['attention']})"
    files = ", ".join(f"{f['name']} ({_human(f['bytes'])})" for f in c["weight_files"])
    rows = [
        ("model type", f"{c['model_type']} ({', '.join(c['architectures'])})"),
        ("parameters", f"{c['parameters']:,} ({_human(c['parameters'], unit='')})"),
        ("layers", c["layers"]),
        ("hidden size", f"{c['hidden_size']} (MLP {c['intermediate_size']})"),
        ("heads", f"{heads}, head dim {c['head_dim']}"),
        ("vocab size", c["vocab_size"]),
        ("max positions", c["max_position_embeddings"]),
        ("tied embeddings", c["tie_word_embeddings"]),
        ("dtype on disk", c["dtype_on_disk"]),
        ("weight files", f"{len(c['weight_files'])}: {files}"),
        ("weights memory", _per_dtype(c["weights_bytes"])),
        ("KV cache / 1k tok", _per_dtype(c["kv_cache_bytes_per_1k_tokens"])),
        ("tokenizer", _tokenizer_summary(c["tokenizer"])),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{c['path']}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


def checkpoint_info(folder: str | Path) -> dict[str, Any]:
    """Facts about an HF checkpoint folder, read from its config and safetensors headers
    (no tensor is loaded)."""
    from lmforge.models.hf import weight_files

    path = checkpoint_dir(folder)
    config = ModelConfig.from_pretrained(path)
    dtypes: dict[str, int] = {}
    files = []
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles have no __iter__
                tensor = f.get_slice(key)
                name = _SAFETENSORS_DTYPES.get(tensor.get_dtype(), tensor.get_dtype())
                dtypes[name] = dtypes.get(name, 0) + math.prod(tensor.get_shape())
        files.append({"name": file.name, "bytes": file.stat().st_size})
    params = config.num_parameters()
    # K and V, per layer, per KV head, per head dimension, for 1000 tokens.
    kv_elements = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 1000
    return {
        "path": str(path),
        "model_type": config.model_type,
        "architectures": config.hf_extra.get("architectures") or [],
        "parameters": params,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "attention_heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "attention": _attention_kind(config),
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "dtype_on_disk": ", ".join(sorted(dtypes, key=dtypes.get, reverse=True)),
        "weight_files": files,
        "weights_bytes": {"float32": 4 * params, "bfloat16": 2 * params},
        "kv_cache_bytes_per_1k_tokens": {"float32": 4 * kv_elements, "bfloat16": 2 * kv_elements},
        "tokenizer": _tokenizer_info(path),
    }


def _attention_kind(config: ModelConfig) -> str:
    if config.num_key_value_heads == config.num_attention_heads:
        return "MHA"
    return "MQA" if config.num_key_value_heads == 1 else "GQA"


def _tokenizer_info(path: Path) -> dict[str, Any] | None:
    if not (path / "tokenizer.json").is_file():
        return None
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    return {"vocab_size": tok.vocab_size, "chat_template": tok.chat_template is not None}


def _tokenizer_summary(tok: dict[str, Any] | None) -> str:
    if tok is None:
        return "none (no tokenizer.json)"
    return f"{tok['vocab_size']} ids, chat template: {'yes' if tok['chat_template'] else 'no'}"


def _per_dtype(sizes: dict[str, int]) -> str:
    return ", ".join(f"{_human(n)} {dtype}" for dtype, n in sizes.items())


def _human(n: float, unit: str = "B") -> str:
    """``1234567`` -> ``'1.23 MB'`` (decimal prefixes, as HF shard sizes are)."""
    if abs(n) < 1000:
        return f"{n:.0f} {unit}".rstrip()
    for prefix in ("K", "M", "G", "T"):
        n /= 1000
        if abs(n) < 1000 or prefix == "T":
            break
    return f"{n:.2f} {prefix}{unit}"


def checkpoint_dir(folder: str | Path) -> Path:
    """``folder`` as a Path, checked to exist and to hold a ``config.json``."""
    path = Path(folder)
    if not path.exists():
        raise CommandError(f"{path}: no such directory")
    if not path.is_dir():
        raise CommandError(f"{path}: not a directory (expected an HF checkpoint folder)")
    if not (path / "config.json").is_file():
        raise CommandError(f"{path}: not a checkpoint folder (no config.json)")
    return path


# ---------------------------------------------------------------------- convert
def _add_convert(commands) -> None:
    p = _subparser(
        commands,
        "convert",
        "rewrite a checkpoint in another dtype and/or shard size (tokenizer files copied too)",
        "  lmforge convert ckpt/ --out ckpt-bf16/ --dtype bfloat16\n"
        "  lmforge convert ckpt/ --out ckpt-sharded/ --max-shard-size 500MB",
    )
    p.add_argument("dir", metavar="DIR", help="source HF checkpoint folder")
    p.add_argument("--out", required=True, metavar="DIR2", help="destination folder")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the written weights (default: as stored)",
    )
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 2GB, 500MB (default: 5GB)")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from lmforge.models.hf import load_model, save_model

    src, out = checkpoint_dir(args.dir), Path(args.out)
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
        f"{_human(sum(f['bytes'] for f in info['weight_files']))}"
    )
    print(f"copied: {', '.join(copied) if copied else 'nothing (no tokenizer files)'}")
    return 0


# ---------------------------------------------------------------------- generate
def _add_generate(commands) -> None:
    p = _subparser(
        commands,
        "generate",
        "continue a prompt with a checkpoint and its tokenizer; prints the completion",
        '  lmforge generate --model runs/demo/model --prompt "12 + 7 =" --greedy\n'
        '  lmforge generate --model ckpt/ --prompt "Tell me a story" --chat --seed 1\n\n'
        "Sampling settings default to the checkpoint's generation_config.json, then to\n"
        "plain sampling (temperature 1). Giving any of them turns sampling on.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint folder")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="default: 128")
    p.add_argument("--temperature", type=float, help="sampling temperature")
    p.add_argument("--top-k", type=int, help="keep only the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (1: all)")
    p.add_argument("--seed", type=int, help="seed for reproducible sampling")
    p.add_argument("--greedy", action="store_true", help="always pick the most likely token")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    import torch

    from lmforge.infer.generate import generate
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer

    folder = checkpoint_dir(args.model)
    tok = load_tokenizer(folder)
    model = load_model(folder, device=args.device)
    if tok.vocab_size > model.config.vocab_size:
        raise CommandError(
            f"{folder}: tokenizer has {tok.vocab_size} ids but the model only "
            f"{model.config.vocab_size} (vocab_size in config.json)"
        )
    if args.chat:
        messages = [{"role": "user", "content": args.prompt}]
        ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    else:
        ids = tok.encode(args.prompt, add_special_tokens=True)
    config_eos = model.config.eos_token_id
    config_eos = config_eos if isinstance(config_eos, list) else [config_eos]
    stop = list(dict.fromkeys([*tok.stop_token_ids, *(i for i in config_eos if i is not None)]))
    out = generate(
        model,
        torch.tensor([ids], device=args.device),
        max_new_tokens=args.max_new_tokens,
        eos_token_id=stop or None,
        seed=args.seed,
        **sampling_settings(args, folder),
    )
    print(tok.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True))
    return 0


def sampling_settings(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """``do_sample``/``temperature``/``top_k``/``top_p``: flags, else generation_config.json."""
    path = folder / "generation_config.json"
    saved = read_json(path, "generation config") if path.is_file() else {}
    given = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p")}
    if args.greedy:
        return {"do_sample": False}
    do_sample = True if any(v is not None for v in given.values()) else saved.get("do_sample", True)
    defaults = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    settings = {k: v if v is not None else saved.get(k, defaults[k]) for k, v in given.items()}
    return {"do_sample": bool(do_sample), **settings}


# ---------------------------------------------------------------------- demo
def _add_demo(commands) -> None:
    p = _subparser(
        commands,
        "demo",
        "R1-style pipeline on CPU: tokenizer, pretrain, SFT, GRPO; held-out accuracy per stage",
        "  lmforge demo\n  lmforge demo --out runs/demo2 --seed 1\n  lmforge demo --fast",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="default: runs/demo")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--fast", action="store_true", help="seconds-long smoke run (tiny settings)")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from lmforge.demo import run_demo

    run_demo(args.out, seed=args.seed, fast=args.fast)
    return 0
