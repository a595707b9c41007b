"""`lmforge chat`: chat with a checkpoint in the terminal, replies streamed, multi-turn
(`lmforge.serve.terminal_chat.chat_loop`).

    lmforge chat --model runs/demo/model [--temperature 0.7] [--system "Be brief."]
    lmforge chat --model Qwen/Qwen2.5-0.5B-Instruct          # a Hub id in the local HF cache
    lmforge chat --adapter runs/sft-lora/model               # the adapter's recorded base
    lmforge chat --model base/ --lora sql=runs/sql-lora/model chat=runs/chat-lora/model
    lmforge chat --model runs/vlm-tiny/model --image cat.png  # a VLM: the image, then questions
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lmforge.commands.common import CommandError, subparser
from lmforge.commands.serve import (
    add_engine_arguments,
    check_model_named,
    check_positive,
    parse_loras,
)


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "chat",
        "chat with a checkpoint in the terminal (streamed replies, multi-turn)",
        "  lmforge chat --model runs/demo/model\n"
        '  lmforge chat --model ckpt/ --temperature 0.7 --system "Answer briefly."\n'
        "  lmforge chat --adapter runs/sft-lora/model    # with the base the adapter records\n"
        "  lmforge chat --model base/ --lora sql=runs/sql-lora/model chat=runs/chat-lora/model\n\n"
        "Type a message and press Enter. /reset forgets the conversation, /exit quits\n"
        "(so does Ctrl-D). With --lora the first adapter answers; /lora NAME switches to\n"
        "another mid-conversation, /lora alone to the base model. --model may be a Hub id\n"
        "(Org/Name) in the local Hugging Face cache. With a vision-language model,\n"
        "--image FILE (repeatable) sends the image(s) with the first user turn.",
    )
    add_engine_arguments(p)
    p.add_argument("--system", help="system message that starts every conversation")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N", help="per reply (256)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default: 1)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="default: 1 (off)")
    p.add_argument("--seed", type=int, help="seed for reproducible replies")
    p.add_argument(
        "--image", action="append", default=[], metavar="FILE",
        help="an image (PNG/JPEG…) sent with the first user turn (vision-language models; "
        "repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--lora", nargs="+", default=[], metavar="NAME=DIR",
        help="LoRA adapters loaded unmerged beside the base model; /lora NAME picks one",
    )  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lmforge.serve.loading import load_engine
    from lmforge.serve.terminal_chat import ChatSettings, chat_loop

    check_model_named(args)
    check_positive(args.max_tokens, "--max-tokens")
    if args.temperature < 0:
        raise CommandError(f"--temperature must be ≥ 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise CommandError(f"--top-p must be in (0, 1], got {args.top_p}")
    loras = parse_loras(args.lora)
    if loras and args.adapter:
        raise CommandError("give --adapter (merged) or --lora (switchable), not both")
    engine, tok, folder, context = load_engine(
        args.model, adapter=args.adapter, loras=loras, device=args.device, dtype=args.dtype,
        max_num_seqs=1,
    )  # fmt: skip
    if tok.chat_template is None:
        raise CommandError(f"{folder}: the tokenizer has no chat template")
    settings = ChatSettings(
        system=args.system,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    adapters = {name: i + 1 for i, name in enumerate(loras)}  # the router's indices
    images = chat_images(engine, folder, args.image) if args.image else None
    chat_loop(engine, tok, context, settings, sys.stdin, sys.stdout, adapters, images)
    return 0


def chat_images(engine: Any, folder: Any, files: list[str]) -> tuple[Any, list[int]]:
    """``--image`` files as the engine's image inputs and each one's token count."""
    from lmforge.infer.multimodal import ImageInputs
    from lmforge.serve.images import image_processor_for

    if not getattr(engine, "multimodal", False):
        raise CommandError(f"--image: {folder} is not a vision-language model")
    processor = image_processor_for(engine.model, folder)
    pixel_values, grid = processor(files)  # ImageInputError (a ValueError) names the file
    return ImageInputs(pixel_values, grid), processor.tokens_per_image(grid)
