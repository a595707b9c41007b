"""`lmforge serve` (the OpenAI-compatible server) and `lmforge chat` (a terminal chat).

lmforge serve --model runs/demo/model [--host 127.0.0.1] [--port 8000] [--api-key KEY]
lmforge chat --model runs/demo/model [--temperature 0.7] [--system "Be brief."]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

DEFAULT_MAX_REQUEST_BYTES = 4 << 20


def add_commands(commands: Any, subparser: Any) -> None:
    """Register ``serve`` and ``chat`` on the ``lmforge`` subparsers; ``subparser`` is cli's
    ``_subparser(commands, name, help, examples)``."""
    p = subparser(
        commands,
        "serve",
        "serve a checkpoint over an OpenAI-compatible HTTP API (plus a web chat page at /)",
        "  lmforge serve --model runs/demo/model\n"
        "  lmforge serve --model ckpt/ --port 8080 --api-key secret --max-model-len 2048\n\n"
        "Then point any OpenAI client at http://127.0.0.1:8000/v1, or open\n"
        "http://127.0.0.1:8000/ in a browser. The key may also come from LMFORGE_API_KEY.",
    )
    _model_args(p)
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
        "--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="N",
        help=f"largest request body (default: {DEFAULT_MAX_REQUEST_BYTES})",
    )  # fmt: skip
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(run=run_serve)

    p = subparser(
        commands,
        "chat",
        "chat with a checkpoint in the terminal (streamed replies, multi-turn)",
        "  lmforge chat --model runs/demo/model\n"
        '  lmforge chat --model ckpt/ --temperature 0.7 --system "Answer briefly."\n\n'
        "Type a message and press Enter. /reset forgets the conversation, /exit quits\n"
        "(so does Ctrl-D).",
    )
    _model_args(p)
    p.add_argument("--system", help="system message that starts every conversation")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N", help="per reply (256)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default: 1)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="default: 1 (off)")
    p.add_argument("--seed", type=int, help="seed for reproducible replies")
    p.set_defaults(run=run_chat)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="HF-format checkpoint folder")
    p.add_argument("--adapter", metavar="DIR", help="LoRA adapter (PEFT format) merged at load")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: as stored")


def load_engine(args: argparse.Namespace, max_num_seqs: int = 64) -> tuple[Any, Any, Path, int]:
    """`Engine`, tokenizer, folder and context length (max positions) for ``--model``,
    checked like every other command's checkpoint."""
    from lmforge.cli import CommandError, checkpoint_dir
    from lmforge.infer.engine import Engine
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer

    folder = checkpoint_dir(args.model)
    if not (folder / "tokenizer.json").is_file():
        raise CommandError(f"{folder}: no tokenizer.json (the server needs the tokenizer)")
    tok = load_tokenizer(folder)
    if getattr(args, "adapter", None):  # fold the LoRA into the weights: full engine speed
        from lmforge.peft.commands import load_merged

        model = load_merged(folder, Path(args.adapter), dtype=args.dtype).to(args.device).eval()
    else:
        model = load_model(folder, dtype=args.dtype, device=args.device).eval()
    if tok.vocab_size > model.config.vocab_size:
        raise CommandError(
            f"{folder}: tokenizer has {tok.vocab_size} ids but the model only "
            f"{model.config.vocab_size} (vocab_size in config.json)"
        )
    engine = Engine(model, tok, max_num_seqs=max_num_seqs)
    return engine, tok, folder, model.config.max_position_embeddings


def _positive(value: int | None, flag: str) -> None:
    from lmforge.cli import CommandError

    if value is not None and value <= 0:
        raise CommandError(f"{flag} must be positive, got {value}")


# ---------------------------------------------------------------------- serve
def run_serve(args: argparse.Namespace) -> int:
    from lmforge.cli import CommandError

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as exc:
        raise CommandError(f"{exc.name} is missing: pip install 'lmforge[serve]'") from exc
    from lmforge.serve.app import create_app
    from lmforge.serve.async_engine import AsyncEngine
    from lmforge.serve.translate import ServerLimits

    for flag in ("max_model_len", "max_tokens_limit", "max_num_seqs", "max_choices",
                 "max_request_bytes"):  # fmt: skip
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if not 0 <= args.port < 65536:
        raise CommandError(f"--port must be in 0..65535, got {args.port}")
    _check_can_listen(args.host, args.port)  # before the (slow) model load
    engine, tok, folder, positions = load_engine(args, args.max_num_seqs)
    max_len = args.max_model_len or positions
    if max_len > positions:
        raise CommandError(f"--max-model-len {max_len} > the model's {positions} positions")
    limits = ServerLimits(
        max_model_len=max_len,
        max_tokens=min(args.max_tokens_limit or max_len, max_len),
        max_choices=args.max_choices,
        max_request_bytes=args.max_request_bytes,
        stop_token_ids=tuple(tok.stop_token_ids),
    )
    name = args.served_model_name or folder.resolve().name
    api_key = args.api_key or os.environ.get("LMFORGE_API_KEY") or None
    app = create_app(AsyncEngine(engine), tok, name, limits, api_key=api_key)
    auth = "API key required" if api_key else "no API key"
    print(f"serving {name!r} on http://{args.host}:{args.port} ({auth})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _check_can_listen(host: str, port: int) -> None:
    from lmforge.cli import CommandError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------- chat
def run_chat(args: argparse.Namespace) -> int:
    from lmforge.cli import CommandError

    _positive(args.max_tokens, "--max-tokens")
    if args.temperature < 0:
        raise CommandError(f"--temperature must be ≥ 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise CommandError(f"--top-p must be in (0, 1], got {args.top_p}")
    engine, tok, _, context = load_engine(args, max_num_seqs=1)
    if tok.chat_template is None:
        raise CommandError(f"{args.model}: the tokenizer has no chat template")
    chat_loop(engine, tok, context, args, sys.stdin, sys.stdout)
    return 0


def chat_loop(
    engine: Any, tok: Any, context: int, args: argparse.Namespace, inp: TextIO, out: TextIO
) -> None:
    """Read messages from ``inp`` and stream replies to ``out`` until /exit or end of input.
    The oldest turns are dropped when the conversation no longer fits the context."""
    from lmforge.infer.engine import SamplingParams

    interactive = inp.isatty()
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
    turn = 0
    out.write("chat: /reset forgets the conversation, /exit quits\n")
    while True:
        out.write("you> ")
        out.flush()
        line = inp.readline()
        if not line:  # end of input
            out.write("\n")
            return
        text = line.rstrip("\n")
        if not interactive:  # echo piped input so the transcript reads like a session
            out.write(text + "\n")
        if text.strip() in ("/exit", "/quit"):
            return
        if text.strip() == "/reset":
            history.clear()
            out.write("(conversation reset)\n")
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        budget = min(args.max_tokens, context - 1)
        while True:
            ids = tok.encode(tok.apply_chat_template(system + history, add_generation_prompt=True))
            if len(ids) + budget <= context or len(history) == 1:
                break
            del history[:2]  # forget the oldest exchange
            out.write("(dropped the oldest turn to fit the context)\n")
        if len(ids) >= context:
            history.pop()
            out.write(f"(message too long: {len(ids)} tokens, the context is {context})\n")
            continue
        params = SamplingParams(
            max_tokens=min(budget, context - len(ids)),
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            repetition_penalty=args.repetition_penalty,
            stop_token_ids=tuple(tok.stop_token_ids),
            seed=None if args.seed is None else args.seed + turn,
        )
        turn += 1
        out.write("assistant> ")
        reply = _stream_reply(engine, ids, params, out)
        out.write("\n")
        history.append({"role": "assistant", "content": reply})


def _stream_reply(engine: Any, ids: list[int], params: Any, out: TextIO) -> str:
    rid = engine.add_request(ids, params)
    text = ""
    try:
        while engine.has_unfinished():
            for o in engine.step():
                if o.request_id == rid:
                    out.write(o.new_text)
                    out.flush()
                    text = o.text
    except KeyboardInterrupt:  # Ctrl-C stops this reply, not the chat
        engine.abort(rid)
        while engine.has_unfinished():
            engine.step()
        out.write(" [stopped]")
    return text
