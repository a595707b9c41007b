"""`lmforge info`: a checkpoint's architecture, parameters, memory, dtype and shards
(`lmforge.models.info.checkpoint_info`).

    lmforge info runs/demo/model [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmforge.commands.common import subparser
from lmforge.models.info import checkpoint_info


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "info",
        "summarise a checkpoint: architecture, parameters, memory, dtype, shards",
        "  lmforge info runs/demo/model\n  lmforge info ckpt/ --json | jq .parameters",
    )
    p.add_argument("dir", metavar="DIR", help="HF-format checkpoint folder")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info = checkpoint_info(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info
    heads = f"{c['attention_heads']} query / {c['kv_heads']} key-value ({c['attention']})"
    files = ", ".join(f"{f['name']} ({human_size(f['bytes'])})" for f in c["weight_files"])
    rows = [
        ("model type", f"{c['model_type']} ({', '.join(c['architectures'])})"),
        ("parameters", f"{c['parameters']:,} ({human_size(c['parameters'], unit='')})"),
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


def _tokenizer_summary(tok: dict[str, Any] | None) -> str:
    if tok is None:
        return "none (no tokenizer.json)"
    return f"{tok['vocab_size']} ids, chat template: {'yes' if tok['chat_template'] else 'no'}"


def _per_dtype(sizes: dict[str, int]) -> str:
    return ", ".join(f"{human_size(n)} {dtype}" for dtype, n in sizes.items())


def human_size(n: float, unit: str = "B") -> str:
    """``1234567`` -> ``'1.23 MB'`` (decimal prefixes, as HF shard sizes are)."""
    if abs(n) < 1000:
        return f"{n:.0f} {unit}".rstrip()
    for prefix in ("K", "M", "G", "T"):
        n /= 1000
        if abs(n) < 1000 or prefix == "T":
            break
    return f"{n:.2f} {prefix}{unit}"
