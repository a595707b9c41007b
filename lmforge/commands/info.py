"""`lmforge info`: a checkpoint's architecture, parameters, memory, dtype and shards
(`lmforge.models.info.checkpoint_info`), or a PEFT adapter's method, rank, targets,
trainable parameters and base (`lmforge.models.info.adapter_info`).

    lmforge info runs/demo/model [--json]
    lmforge info runs/sft-lora/model          # an adapter folder
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmforge.commands.common import subparser
from lmforge.models.hub import resolve_model_path
from lmforge.models.info import adapter_info, checkpoint_info, is_adapter_folder


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "info",
        "summarise a checkpoint (architecture, parameters, memory, dtype, shards) or an adapter",
        "  lmforge info runs/demo/model\n  lmforge info ckpt/ --json | jq .parameters\n"
        "  lmforge info runs/sft-lora/model        # a PEFT adapter: method, rank, base\n"
        "  lmforge info Qwen/Qwen2.5-0.5B          # a Hub id in the local HF cache",
    )
    p.add_argument(
        "dir", metavar="DIR", help="HF checkpoint or PEFT adapter folder, or a cached Hub id"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if is_adapter_folder(args.dir):
        return print_adapter(adapter_info(args.dir), args.json)
    info = checkpoint_info(resolve_model_path(args.dir))
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
        ("quantization", _quantization_summary(c.get("quantization"))),
    ]
    if c.get("moe"):
        rows[5:5] = moe_rows(c["moe"], c["parameters"])
    print_rows(c["path"], rows)
    return 0


def moe_rows(moe: dict[str, Any], total: int) -> list[tuple[str, str]]:
    """Rows for a mixture-of-experts model (`lmforge.models.info` ``info["moe"]``)."""
    active = moe["active_parameters"]
    return [
        (
            "experts",
            f"{moe['routed_experts']} routed + {moe['shared_experts']} shared, top-"
            f"{moe['experts_per_token']} (expert MLP {moe['expert_intermediate_size']})",
        ),
        ("MoE layers", f"{moe['moe_layers']} MoE, {moe['dense_layers']} dense"),
        (
            "active params",
            f"{active:,} of {total:,} per token ({100 * moe['active_fraction']:.1f} %)",
        ),
    ]


def print_adapter(a: dict[str, Any], as_json: bool) -> int:
    """The adapter's facts as rows (or JSON)."""
    if as_json:
        print(json.dumps(a, indent=2))
        return 0
    params = f"{a['trainable_parameters']:,} ({human_size(a['trainable_parameters'], unit='')})"
    base = a["base"] or {}
    if base.get("parameters"):
        share = 100 * a["trainable_parameters"] / base["parameters"]
        params += f", {share:.2f} % of the base's {base['parameters']:,}"
    rows: list[tuple[str, Any]] = [("adapter", a["method"])]
    if a["r"] is not None:
        scale = "α/√r, rsLoRA" if a["use_rslora"] else "α/r"
        rows.append(("rank / alpha", f"r={a['r']}, alpha={a['lora_alpha']} (scale {scale})"))
    if a["num_virtual_tokens"] is not None:
        rows.append(("virtual tokens", a["num_virtual_tokens"]))
    targets = a["target_modules"]
    if targets is not None:
        rows.append(("targets", ", ".join(targets) if isinstance(targets, list) else targets))
    recorded = a["base_model_name_or_path"] or "not recorded"
    where = base.get("found")
    found = f" -> {where}" if where and where != recorded else ""
    missing = " (not found here)" if a["base"] is not None and not where else ""
    rows += [
        ("trainable params", params),
        ("dtype on disk", a["dtype_on_disk"]),
        ("weights file", human_size(a["weights_bytes"])),
        ("base model", f"{recorded}{found}{missing}"),
        ("tokenizer", _tokenizer_summary(a["tokenizer"])),
    ]
    print_rows(a["path"], rows)
    return 0


def print_rows(title: str, rows: list[tuple[str, Any]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(title)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


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


def _quantization_summary(block: dict | None) -> str:
    """``none``, or ``int8, 29 modules`` / ``int4 (groups of 64), 29 modules``."""
    if not block:
        return "none"
    bits = block["bits"]
    groups = f" (groups of {block['group_size']})" if bits == 4 else ""
    return f"int{bits}{groups}, {len(block['modules'])} modules weight-only"
