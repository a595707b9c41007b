"""`lmforge serve`: a checkpoint over an OpenAI-compatible HTTP API, plus a web chat page
at ``/`` (`lmforge.serve`).

    lmforge serve --model runs/demo/model [--host 127.0.0.1] [--port 8000] [--api-key KEY]
    lmforge serve --model base/ --lora sql=runs/sql-lora/model chat=runs/chat-lora/model
    lmforge serve --model Qwen/Qwen2.5-0.5B          # a Hub id in the local HF cache
    lmforge serve --adapter runs/sft-lora/model      # the base the adapter records
    lmforge serve --model runs/vlm-tiny/model        # a VLM: chat messages may hold images
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from pathlib import Path
from typing import Any

from lmforge.commands.common import CommandError, subparser
from lmforge.commands.generate import add_speculative_arguments, speculative_settings
from lmforge.models.hub import hub_id_of

DEFAULT_MAX_REQUEST_BYTES = 4 << 20


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "serve",
        "serve a checkpoint over an OpenAI-compatible HTTP API (plus a web chat page at /)",
        "  lmforge serve --model runs/demo/model\n"
        "  lmforge serve --model ckpt/ --port 8080 --api-key secret --max-model-len 2048\n"
        "  lmforge serve --model base/ --lora sql=runs/sql-lora/model --docs\n"
        "  lmforge serve --adapter runs/sft-lora/model --port 8001   # its recorded base\n\n"
        "Then point any OpenAI client at http://127.0.0.1:8000/v1, or open\n"
        "http://127.0.0.1:8000/ in a browser. The key may also come from LMFORGE_API_KEY.\n"
        'With --lora, a request\'s "model" picks the adapter (its NAME) or the base model;\n'
        "Prometheus metrics are at /metrics. --model may be a Hub id (Org/Name) in the local\n"
        "Hugging Face cache; without --model, --adapter's recorded base is served.\n"
        "A vision-language model (qwen2_vl) takes images in chat messages as OpenAI\n"
        "image_url parts holding data: URLs (base64 PNG/JPEG); remote URLs are refused.",
    )
    add_engine_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 routes")
    p.add_argument(
        "--served-model-name", metavar="NAME", help="model id clients use (default: folder name)"
    )
    p.add_argument(
        "--max-model-len", type=int, metavar="N", help="prompt + completion tokens (default: "
        "the model's max_position_embeddings)",
    )  # fmt: skip
    p.add_argument(
        "--max-tokens-limit", type=int, metavar="N",
        help="largest max_tokens a request may ask for (default: --max-model-len)",
    )  # fmt: skip
    p.add_argument("--max-num-seqs", type=int, default=64, metavar="N", help="default: 64")
    p.add_argument("--max-choices", type=int, default=16, metavar="N",
                   help="largest n × prompts per request (default: 16)")  # fmt: skip
    p.add_argument(
        "--max-image-tokens", type=int, metavar="N",
        help="vision tokens all images of one request may take (VLMs; default: --max-model-len)",
    )  # fmt: skip
    p.add_argument(
        "--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="N",
        help=f"largest request body (default: {DEFAULT_MAX_REQUEST_BYTES})",
    )  # fmt: skip
    p.add_argument(
        "--lora", nargs="+", default=[], metavar="NAME=DIR",
        help="LoRA adapters served beside the base model, unmerged: a request whose model is "
        "NAME is decoded with that adapter (requests of all adapters share one batch)",
    )  # fmt: skip
    p.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json")
    p.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="without --api-key the server answers only Host headers naming its address "
        "(against DNS rebinding); also answer NAME (repeatable)",
    )  # fmt: skip
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--compile-decode", choices=tuple(COMPILE_DECODE), default="off",
        help="steps where every sequence decodes one token run as one function per shape "
        "bucket: 'eager' (no compilation) or 'inductor' (torch.compile, a compilation per "
        "bucket); on a GPU each bucket is replayed as a CUDA graph (30m preset on an H200: "
        "7.5x the batch-1 tokens/s). Needs the engine's fused weights (one more copy of the "
        "linear weights); default: off",
    )  # fmt: skip
    add_speculative_arguments(p)
    p.set_defaults(run=run)


COMPILE_DECODE = {"off": False, "eager": "eager", "inductor": True}  # → Engine(compile_decode=)


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--adapter``, ``--device``, ``--dtype`` (`load_engine`'s arguments)."""
    p.add_argument(
        "--model", metavar="DIR", help="HF-format checkpoint folder, or a Hub id in the local "
        "Hugging Face cache (default with --adapter: the adapter's recorded base)",
    )  # fmt: skip
    p.add_argument("--adapter", metavar="DIR", help="LoRA adapter (PEFT format) merged at load")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: as stored")


def check_model_named(args: argparse.Namespace) -> None:
    """`CommandError` unless ``--model`` or ``--adapter`` (whose base is recorded) is given."""
    if not args.model and not args.adapter:
        raise CommandError("name the model: --model DIR (or --adapter DIR with a recorded base)")


def served_name(folder: Path) -> str:
    """The model id clients use by default: the Hub id of a cached snapshot, else the
    checkpoint folder's name."""
    return hub_id_of(folder) or folder.resolve().name


def check_positive(value: int | None, flag: str) -> None:
    if value is not None and value <= 0:
        raise CommandError(f"{flag} must be positive, got {value}")


LORA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def parse_loras(items: list[str]) -> dict[str, str]:
    """``NAME=DIR`` items → {name: folder}; names are unique model ids."""
    loras: dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not folder:
            raise CommandError(f"--lora {item!r}: expected NAME=DIR")
        if not LORA_NAME.match(name):
            raise CommandError(f"--lora {item!r}: NAME may use letters, digits, '_' and '-'")
        if name in loras:
            raise CommandError(f"--lora: the name {name!r} is given twice")
        if not os.path.isdir(folder):
            raise CommandError(f"--lora {item!r}: {folder} is not a folder")
        loras[name] = folder
    return loras


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401  (/metrics)
        import uvicorn
    except ModuleNotFoundError as exc:
        raise CommandError(f"{exc.name} is missing: pip install 'lmforge[serve]'") from exc
    from lmforge.serve.app import create_app
    from lmforge.serve.async_engine import AsyncEngine
    from lmforge.serve.errors import allowed_hosts_for
    from lmforge.serve.images import image_processor_for
    from lmforge.serve.loading import load_engine
    from lmforge.serve.translate import ServerLimits

    for flag in ("max_model_len", "max_tokens_limit", "max_num_seqs", "max_choices",
                 "max_request_bytes", "max_image_tokens"):  # fmt: skip
        check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    check_model_named(args)
    if not 0 <= args.port < 65536:
        raise CommandError(f"--port must be in 0..65535, got {args.port}")
    loras = parse_loras(args.lora)
    if loras and args.adapter:
        raise CommandError("give --adapter (merged) or --lora (per request), not both")
    check_can_listen(args.host, args.port)  # before the (slow) model load
    engine, tok, folder, positions = load_engine(
        args.model, adapter=args.adapter, loras=loras, device=args.device, dtype=args.dtype,
        max_num_seqs=args.max_num_seqs, speculative=speculative_settings(args),
        compile_decode=COMPILE_DECODE[args.compile_decode],
    )  # fmt: skip
    max_len = args.max_model_len or positions
    if max_len > positions:
        raise CommandError(f"--max-model-len {max_len} > the model's {positions} positions")
    limits = ServerLimits(
        max_model_len=max_len,
        max_tokens=min(args.max_tokens_limit or max_len, max_len),
        max_choices=args.max_choices,
        max_request_bytes=args.max_request_bytes,
        stop_token_ids=tuple(tok.stop_token_ids),
        max_image_tokens=args.max_image_tokens,
    )
    multimodal = getattr(engine, "multimodal", False)
    processor = image_processor_for(engine.model, folder) if multimodal else None
    name = args.served_model_name or served_name(folder)
    if name in loras:
        raise CommandError(f"--lora name {name!r} is the base model's name; rename one")
    api_key = args.api_key or os.environ.get("LMFORGE_API_KEY") or None
    app = create_app(
        AsyncEngine(engine), tok, name, limits, api_key=api_key, adapters=list(loras),
        allowed_hosts=allowed_hosts_for(args.host, api_key, args.allowed_host), docs=args.docs,
        image_processor=processor,
    )  # fmt: skip
    auth = "API key required" if api_key else "no API key"
    served = ", ".join(repr(n) for n in [name, *loras])
    images = ", images in chat" if multimodal else ""
    print(
        f"serving {served} on http://{args.host}:{args.port} ({auth}, {engine.device}{images})",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def check_can_listen(host: str, port: int) -> None:
    """Fail now, not after loading the model, when ``host:port`` is taken or invalid."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
