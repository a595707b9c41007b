"""A multi-turn chat in the terminal over the inference engine (``lmforge chat``): replies
stream as they are generated; the oldest turns are dropped when the conversation outgrows
the context.

    engine, tok, _, context = load_engine("runs/demo/model", max_num_seqs=1)
    chat_loop(engine, tok, context, ChatSettings(temperature=0.7), sys.stdin, sys.stdout)

With LoRA adapters loaded unmerged (``load_engine(..., loras=…)``), ``adapters`` names them
(name → the engine's adapter index): the first answers at start, ``/lora NAME`` switches to
another mid-conversation, ``/lora`` alone to the base model.

With a vision-language model, ``images`` (``lmforge chat --image FILE``: processed
`ImageInputs` and each image's token count) go with the first user turn of the
conversation: its text starts with the images' placeholders and every reply's request
carries the images, until ``/reset`` or the turn is dropped to fit the context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from lmforge.infer.multimodal import ImageInputs
from lmforge.infer.params import SamplingParams
from lmforge.serve.images import image_placeholders


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
    engine: Any,
    tok: Any,
    context: int,
    settings: ChatSettings,
    inp: TextIO,
    out: TextIO,
    adapters: Mapping[str, int] | None = None,
    images: tuple[ImageInputs, list[int]] | None = None,
) -> None:
    """Read messages from ``inp`` and stream replies to ``out`` until /exit or end of input.
    The oldest turns are dropped when the conversation no longer fits the context.
    ``adapters``: LoRA adapter name → the engine's adapter index (``/lora NAME`` picks one).
    ``images``: the images and their token counts, sent with the first user turn."""
    interactive = inp.isatty()
    system = [{"role": "system", "content": settings.system}] if settings.system else []
    history: list[dict[str, str]] = []
    attached: ImageInputs | None = None  # the images of history[0], if it holds them
    turn = 0
    adapters = dict(adapters or {})
    out.write("chat: /reset forgets the conversation, /exit quits\n")
    adapter = pick_adapter(f"/lora {next(iter(adapters))}" if adapters else "", adapters, 0, out)
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
            attached = None
            out.write("(conversation reset)\n")
            continue
        if text.strip() == "/lora" or text.strip().startswith("/lora "):
            adapter = pick_adapter(text.strip(), adapters, adapter, out)
            continue
        if not text.strip():
            continue
        if images is not None and not history:  # a new conversation: the images come first
            attached = images[0]
            text = "".join(image_placeholders(n) for n in images[1]) + text
        history.append({"role": "user", "content": text})
        budget = min(settings.max_tokens, context - 1)
        while True:
            ids = tok.encode(tok.apply_chat_template(system + history, add_generation_prompt=True))
            if len(ids) + budget <= context or len(history) == 1:
                break
            del history[:2]  # forget the oldest exchange (and its images)
            attached = None
            out.write("(dropped the oldest turn to fit the context)\n")
        if len(ids) >= context:
            history.pop()
            attached = None if not history else attached
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
        reply = stream_reply(engine, ids, params, out, adapter, attached)
        out.write("\n")
        history.append({"role": "assistant", "content": reply})


def pick_adapter(command: str, adapters: Mapping[str, int], current: int, out: TextIO) -> int:
    """The adapter index ``/lora NAME`` picks (``/lora`` alone: 0, the base model; an unknown
    name: ``current``, listing the names); says the choice on ``out``. An empty ``command``
    picks nothing and says nothing."""
    if not command:
        return current
    name = command.removeprefix("/lora").strip()
    if not name:
        out.write("(answering with the base model)\n")
        return 0
    if name not in adapters:
        names = ", ".join(adapters) or "none (start the chat with --lora NAME=DIR)"
        out.write(f"(no LoRA adapter {name!r}; adapters: {names})\n")
        return current
    others = "; /lora NAME switches, /lora alone: the base model"
    out.write(f"(answering with LoRA adapter {name!r}{others})\n")
    return adapters[name]


def stream_reply(
    engine: Any,
    ids: list[int],
    params: SamplingParams,
    out: TextIO,
    adapter: int = 0,
    images: ImageInputs | None = None,
) -> str:
    """Generate one reply to ``ids`` (with the engine's LoRA adapter ``adapter``; 0: the base
    model; ``images`` for a vision-language model), writing its text to ``out`` as it comes;
    Ctrl-C stops the reply (not the chat). Returns the reply's text."""
    extra: dict[str, Any] = {} if images is None else {"images": images}
    if adapter:
        extra["adapter"] = adapter
    rid = engine.add_request(ids, params, **extra)
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
