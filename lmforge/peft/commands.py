"""PEFT on the command line: ``--peft`` options of ``lmforge sft`` and ``lmforge merge``.

    lmforge sft --config recipes/sft-tiny.yaml --model ckpt/ --data chat.jsonl \\
        --peft lora --lora-r 16 --lora-alpha 32 --lora-targets q_proj,v_proj
    lmforge sft ... --peft lora --quantize nf4     # QLoRA: 4-bit frozen base (bitsandbytes)
    lmforge merge --base ckpt/ --adapter runs/sft/model --out merged/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

METHODS = ("lora", "dora", "prefix", "prompt", "adapter")
QUANT_METHODS = ("nf4", "fp4", "int8", "int4")  # lmforge.peft.quantize.METHODS


def add_peft_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--peft`` options (for ``lmforge sft``)."""
    g = p.add_argument_group("parameter-efficient fine-tuning (trains and saves only the adapter)")
    g.add_argument("--peft", choices=METHODS, help="train an adapter instead of all weights")
    g.add_argument("--lora-r", type=int, default=16, metavar="R", help="LoRA rank (16)")
    g.add_argument("--lora-alpha", type=float, default=32.0, metavar="A", help="LoRA α (32)")
    g.add_argument("--lora-dropout", type=float, default=0.0, metavar="P", help="(0)")
    g.add_argument(
        "--lora-targets",
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
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


def apply_peft_from_args(model: nn.Module, args: argparse.Namespace, source: str) -> nn.Module:
    """Add the adapter ``args.peft`` asks for (nothing without ``--peft``)."""
    method = getattr(args, "peft", None)
    quantize = getattr(args, "quantize", None)
    if quantize and method != "lora":
        raise ValueError(f"--quantize {quantize} needs --peft lora (a quantised base is frozen; "
                         "DoRA and adapters need the full-precision weights)")  # fmt: skip
    if not method:
        return model
    model.name_or_path = source
    if quantize:
        import torch

        from lmforge.peft.quantize import quantize_base

        if torch.cuda.is_available():  # quantise where it trains: the packed layout is per device
            model.to(torch.device("cuda", torch.cuda.current_device()))
        quantize_base(model, quantize, getattr(torch, args.quant_compute_dtype))
    if method in ("lora", "dora"):
        from lmforge.peft.state import apply_lora

        targets = args.lora_targets.split(",") if "," in args.lora_targets else [args.lora_targets]
        if targets == ["all-linear"]:
            targets = "all-linear"
        return apply_lora(model, args.lora_r, args.lora_alpha, targets, args.lora_dropout,
                          use_rslora=args.rslora, use_dora=method == "dora")  # fmt: skip
    if method in ("prefix", "prompt"):
        # SFT batches are packed (several documents per row); virtual tokens need each
        # sequence on its own row, which lmforge's SFT loader does not produce.
        raise ValueError(
            f"--peft {method} needs unpacked batches (every sequence starting at the virtual "
            "tokens); use lmforge.peft.apply_prefix_tuning / apply_prompt_tuning with your own "
            "one-sequence-per-row loader, or --peft lora / dora / adapter"
        )
    from lmforge.peft.adapters import apply_adapters

    return apply_adapters(model, bottleneck=args.bottleneck)


# ---------------------------------------------------------------------- merge
def add_merge_command(commands, subparser) -> None:
    """Register ``lmforge merge`` (``subparser(commands, name, help, examples)``)."""
    p = subparser(
        commands,
        "merge",
        "merge a LoRA / DoRA adapter into its base model and write an HF checkpoint",
        "  lmforge merge --base ckpt/ --adapter runs/sft-lora/model --out merged/\n"
        "  lmforge merge --base ckpt/ --adapter peft-adapter/ --out merged/ --dtype bfloat16",
    )
    p.add_argument("--base", required=True, metavar="DIR", help="HF base checkpoint folder")
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder (PEFT format)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype")
    p.set_defaults(run=run_merge)


def load_merged(base: str | Path, adapter: str | Path, dtype=None) -> nn.Module:
    """The base checkpoint with a LoRA adapter folded into its weights (a plain model)."""
    import torch

    from lmforge.models.hf import load_model
    from lmforge.peft.io import load_adapter, read_adapter_config
    from lmforge.peft.state import merge_and_unload

    kind = read_adapter_config(adapter)["peft_type"]
    if kind != "LORA":
        raise ValueError(f"{adapter}: a {kind} adapter cannot be merged into weights (only LoRA)")
    model = load_model(base, dtype=torch.float32)
    load_adapter(model, adapter)
    model = merge_and_unload(model)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    return model.to(dtype) if dtype is not None else model


def run_merge(args: argparse.Namespace) -> int:
    from lmforge.cli import checkpoint_dir
    from lmforge.models.hf import save_model
    from lmforge.tokenizer import load_tokenizer

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
