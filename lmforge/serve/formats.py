"""Engine outputs → OpenAI responses, whole (``full``) or as the chunks of a stream: chat
completions (with tool calls parsed out of the reply, `lmforge.serve.tools`) and legacy
completions (with ``echo``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from lmforge.serve.protocol import CompletionRequest
from lmforge.serve.responses import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    OutFunctionCall,
    OutToolCall,
    ToolCallDelta,
    Usage,
)
from lmforge.serve.tools import ParsedCall, ToolCallStream, parse_tool_calls
from lmforge.serve.translate import chat_logprobs, completion_logprobs

__all__ = ["ChatFormat", "FinalOutput", "TextFormat", "chain", "usage_of"]


@dataclass
class FinalOutput:
    out: Any = None
    logprobs: list | None = None


def usage_of(prompt_tokens: int, outputs: list[Any]) -> Usage:
    completion = sum(len(o.token_ids) for o in outputs)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
    )


class ChatFormat:
    prefix = "chatcmpl"

    def __init__(self, state: Any, model: str, tool_mode: str | None = None) -> None:
        """``model``: the served name the request asked for (the base or an adapter)."""
        self.state, self.model, self.tool_mode = state, model, tool_mode

    def _message(self, out: Any) -> tuple[AssistantMessage, str | None]:
        if self.tool_mode is None:
            return AssistantMessage(content=out.text), out.finish_reason
        content, calls = parse_tool_calls(out.text)
        message = AssistantMessage(
            content=content, tool_calls=[_out_call(c) for c in calls] or None
        )
        return message, "tool_calls" if calls and out.finish_reason == "stop" else out.finish_reason

    def full(self, rid: str, outputs: list[FinalOutput], prompt_tokens: int) -> dict:
        tok = self.state.tokenizer
        choices = []
        for i, f in enumerate(outputs):
            message, finish = self._message(f.out)
            choices.append(
                ChatChoice(
                    index=i,
                    message=message,
                    logprobs=chat_logprobs(tok, f.logprobs),
                    finish_reason=finish,
                )
            )
        return ChatCompletion(
            id=rid,
            created=int(time.time()),
            model=self.model,
            choices=choices,
            usage=usage_of(prompt_tokens, [f.out for f in outputs]),
        ).model_dump()

    async def stream(
        self, rid: str, first: tuple, rest: AsyncIterator, count: int, prompt_tokens: int,
        include_usage: bool,
    ) -> AsyncIterator[dict]:  # fmt: skip
        created, tok = int(time.time()), self.state.tokenizer

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> dict:
            c = ChatCompletionChunk(
                id=rid, created=created, model=self.model, choices=choices, usage=usage
            )
            return c.model_dump() if include_usage else c.model_dump(exclude={"usage"})

        for i in range(count):
            yield chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
        final: list[Any] = [None] * count
        parsers = [ToolCallStream() for _ in range(count)] if self.tool_mode else None
        num_calls = [0] * count
        async for index, out in chain(first, rest):
            logprobs = chat_logprobs(tok, out.logprobs)
            text, calls = out.new_text, []
            if parsers is not None:
                text, calls = parsers[index].feed(out.new_text, final=out.finished)
            if text or (logprobs and logprobs.content):
                delta = Delta(content=text)
                yield chunk([ChunkChoice(index=index, delta=delta, logprobs=logprobs)])
            for call in calls:
                piece = ToolCallDelta(
                    index=num_calls[index], id=call.id, type="function",
                    function=OutFunctionCall(name=call.name, arguments=call.arguments),
                )  # fmt: skip
                num_calls[index] += 1
                yield chunk([ChunkChoice(index=index, delta=Delta(tool_calls=[piece]))])
            if out.finished:
                final[index] = out
                reason = out.finish_reason
                if num_calls[index] and reason == "stop":
                    reason = "tool_calls"
                yield chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=reason)])
        if include_usage:
            yield chunk([], usage_of(prompt_tokens, final))


def _out_call(call: ParsedCall) -> OutToolCall:
    return OutToolCall(
        id=call.id, function=OutFunctionCall(name=call.name, arguments=call.arguments)
    )


class TextFormat:
    prefix = "cmpl"

    def __init__(self, state: Any, body: CompletionRequest) -> None:
        self.state, self.echo, self.model = state, body.echo, body.model

    def _echo(self, out: Any) -> str:
        return self.state.tokenizer.decode(out.prompt_token_ids) if self.echo else ""

    def full(self, rid: str, outputs: list[FinalOutput], prompt_tokens: int) -> dict:
        tok = self.state.tokenizer
        choices = []
        for i, f in enumerate(outputs):
            prefix = self._echo(f.out)
            choices.append(
                CompletionChoice(
                    index=i,
                    text=prefix + f.out.text,
                    logprobs=completion_logprobs(tok, f.logprobs, len(prefix)),
                    finish_reason=f.out.finish_reason,
                )
            )
        return Completion(
            id=rid,
            created=int(time.time()),
            model=self.model,
            choices=choices,
            usage=usage_of(prompt_tokens, [f.out for f in outputs]),
        ).model_dump()

    async def stream(
        self, rid: str, first: tuple, rest: AsyncIterator, count: int, prompt_tokens: int,
        include_usage: bool,
    ) -> AsyncIterator[dict]:  # fmt: skip
        created, tok = int(time.time()), self.state.tokenizer

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> dict:
            c = Completion(id=rid, created=created, model=self.model, choices=choices, usage=usage)
            return c.model_dump() if include_usage else c.model_dump(exclude={"usage"})

        final: list[Any] = [None] * count
        offsets = [0] * count
        async for index, out in chain(first, rest):
            text = out.new_text
            if final[index] is None and offsets[index] == 0 and self.echo:
                text = self._echo(out) + text
            logprobs = completion_logprobs(tok, out.logprobs, offsets[index])
            offsets[index] += len(text)
            if out.finished:
                final[index] = out
            if text or logprobs or out.finished:
                choice = CompletionChoice(
                    index=index,
                    text=text,
                    logprobs=logprobs,
                    finish_reason=out.finish_reason if out.finished else None,
                )
                yield chunk([choice])
        if include_usage:
            yield chunk([], usage_of(prompt_tokens, final))


async def chain(first: tuple, rest: AsyncIterator) -> AsyncIterator[tuple]:
    yield first
    async for item in rest:
        yield item
