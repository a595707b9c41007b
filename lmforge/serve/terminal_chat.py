"""A multi-turn chat in the terminal over the inference engine (``lmforge chat``): replies
stream as they are generated; the oldest turns are dropped when the conversation outgrows
the context.

    engine, tok, _, context = load_engine("runs/demo/model", max_num_seqs=1)
    chat_loop(engine, tok, context, ChatSettings(temperature=0.7), sys.stdin, sys.stdout)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

from lmforge.infer.params import SamplingParams


@dataclass
class ChatSettings:
    """How replies are sampled, and the system message that starts every conversation."""

    system: str | None = None
    max_tokens: int = 256  # per reply
    temperature: float = 0.7  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # 1: off
    seed: int | None = None  # turn i samples with seed + i


def chat_loop(
    engine: Any, tok: Any, context: int, settings: ChatSettings, inp: TextIO, out: TextIO
) -> None:
    """Read messages from ``inp`` and stream replies to ``out`` until /exit or end of input.
    The oldest turns are dropped when the conversation no longer fits the context."""
    interactive = inp.isatty()
    system = [{"role": "system", "content": settings.system}] if settings.system else []
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
        budget = min(settings.max_tokens, context - 1)
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
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            repetition_penalty=settings.repetition_penalty,
            stop_token_ids=tuple(tok.stop_token_ids),
            seed=None if settings.seed is None else settings.seed + turn,
        )
        turn += 1
        out.write("assistant> ")
        reply = stream_reply(engine, ids, params, out)
        out.write("\n")
        history.append({"role": "assistant", "content": reply})


def stream_reply(engine: Any, ids: list[int], params: SamplingParams, out: TextIO) -> str:
    """Generate one reply to ``ids``, writing its text to ``out`` as it comes; Ctrl-C stops
    the reply (not the chat). Returns the reply's text."""
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
