"""The OpenAI-compatible HTTP API (FastAPI) over an `AsyncEngine`.

    GET  /                      the web chat page (static/chat.html)
    GET  /health                200 while the engine runs (+ request / token counters)
    GET  /v1/models             the one model served
    POST /v1/completions        legacy completions (text or token-id prompts)
    POST /v1/chat/completions   chat completions (the tokenizer's chat template)

Both POST routes stream as server-sent events with ``"stream": true`` (``data: {json}``
chunks, then ``data: [DONE]``). Every error, including FastAPI's validation errors, an
unknown route, a too-large body and a wrong API key, is answered in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status; a 5xx means the
engine itself failed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from lmforge.serve.async_engine import AsyncEngine, GenerationError
from lmforge.serve.errors import Guard, install_error_handlers
from lmforge.serve.protocol import (
    APIError,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    ModelCard,
    ModelList,
    Usage,
    error_body,
)
from lmforge.serve.translate import (
    ServerLimits,
    chat_logprobs,
    chat_prompt_ids,
    completion_logprobs,
    completion_prompt_ids,
    constraint_spec,
    generation_budget,
    sampling_params,
)

DISCONNECT_POLL_S = 0.25


@dataclass
class ServerState:
    engine: AsyncEngine
    tokenizer: Any
    model_name: str
    limits: ServerLimits
    created: int


def create_app(
    engine: AsyncEngine,
    tokenizer: Any,
    model_name: str,
    limits: ServerLimits,
    api_key: str | None = None,
) -> FastAPI:
    """The API app. ``engine`` is started with the app and shut down with it; ``api_key``
    (when set) is required as ``Authorization: Bearer <key>`` on every ``/v1`` route."""
    state = ServerState(engine, tokenizer, model_name, limits, int(time.time()))

    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.shutdown()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        page = resources.files("lmforge.serve").joinpath("static/chat.html").read_text("utf-8")
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = engine.is_running
        body = {
            "status": "ok" if ok else "engine stopped",
            "running_requests": engine.num_running,
            "generated_tokens": engine.num_generated_tokens,
        }
        return JSONResponse(body, 200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> dict:
        card = ModelCard(id=model_name, created=state.created, max_model_len=limits.max_model_len)
        return ModelList(data=[card]).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        _check_model(state, body.model)
        prompt = chat_prompt_ids(tokenizer, body.messages)
        return await _complete(state, request, body, [prompt], "messages", _ChatFormat(state))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _check_model(state, body.model)
        prompts = completion_prompt_ids(tokenizer, body.prompt)
        return await _complete(state, request, body, prompts, "prompt", _TextFormat(state, body))

    # Outermost: refuse wrong keys and oversized bodies before anything is parsed.
    app.add_middleware(Guard, api_key=api_key, max_bytes=limits.max_request_bytes)
    return app


def _check_model(state: ServerState, name: str) -> None:
    if name != state.model_name:
        raise APIError(
            f"The model `{name}` does not exist; this server serves `{state.model_name}`.",
            status=404,
            param="model",
            code="model_not_found",
        )


# ---------------------------------------------------------------------- running a request
async def _complete(
    state: ServerState,
    request: Request,
    body: ChatCompletionRequest | CompletionRequest,
    prompts: list[list[int]],
    prompt_param: str,
    fmt: _ChatFormat | _TextFormat,
) -> Response:
    limits = state.limits
    if len(prompts) * body.n > limits.max_choices:
        raise APIError(
            f"{len(prompts)} prompt(s) × n={body.n} = {len(prompts) * body.n} choices; this "
            f"server allows at most {limits.max_choices} per request",
            param="n",
        )
    budgets = [generation_budget(len(p), body.token_limit, limits, prompt_param) for p in prompts]
    constraints = await _constraints(state.tokenizer, body, len(prompts) * body.n)
    jobs = []
    for i, (prompt, budget) in enumerate(zip(prompts, budgets)):
        for j in range(body.n):
            params = sampling_params(body, budget, limits, j, constraints[i * body.n + j])
            jobs.append((prompt, params))
    stream = state.engine.generate(jobs)
    try:  # the first step surfaces the engine's verdict on the request as a 4xx
        first = await anext(stream)
    except ValueError as exc:
        raise APIError(str(exc)) from exc
    prompt_tokens = sum(len(p) for p, _ in jobs[:: body.n])
    rid = f"{fmt.prefix}-{uuid.uuid4().hex}"
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        events = fmt.stream(rid, first, stream, len(jobs), prompt_tokens, include_usage)
        return StreamingResponse(
            _sse(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    outputs = await _until_disconnect(request, _collect(first, stream, len(jobs)))
    return JSONResponse(fmt.full(rid, outputs, prompt_tokens))


async def _constraints(tokenizer: Any, body: Any, count: int) -> list[Any]:
    """One fresh constraint per choice (they hold decoding state), compiled off the loop."""
    spec = constraint_spec(body)
    if spec is None:
        return [None] * count
    from lmforge.infer.structured import compile_constraint

    param = "response_format" if body.response_format is not None else "guided_regex"
    try:
        return [
            await asyncio.to_thread(compile_constraint, tokenizer, **spec) for _ in range(count)
        ]
    except (ValueError, TypeError, RuntimeError) as exc:  # grammar engines raise all three
        raise APIError(f"invalid {param}: {exc}", param=param) from exc


async def _collect(first: tuple, stream: AsyncIterator, count: int) -> list[_Final]:
    """Every choice's last output, with the logprobs of all its steps gathered."""
    final = [_Final() for _ in range(count)]
    async for index, out in _chain(first, stream):
        final[index].out = out
        if out.logprobs is not None:
            final[index].logprobs = (final[index].logprobs or []) + list(out.logprobs)
    return final


@dataclass
class _Final:
    out: Any = None
    logprobs: list | None = None


async def _until_disconnect(request: Request, work: Awaitable) -> Any:
    """Await ``work``, cancelling it (so the engine aborts the request) if the client goes."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise APIError("client disconnected", status=499)


async def _sse(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
    except (APIError, ValueError, GenerationError) as exc:  # headers are gone: report in-band
        message = exc.message if isinstance(exc, APIError) else str(exc)
        yield f"data: {json.dumps(error_body(message, 'server_error'))}\n\n"
    yield "data: [DONE]\n\n"


def _usage(prompt_tokens: int, outputs: list[Any]) -> Usage:
    completion = sum(len(o.token_ids) for o in outputs)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
    )


# ---------------------------------------------------------------------- response shapes
class _ChatFormat:
    prefix = "chatcmpl"

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def full(self, rid: str, outputs: list[_Final], prompt_tokens: int) -> dict:
        tok = self.state.tokenizer
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=f.out.text),
                logprobs=chat_logprobs(tok, f.logprobs),
                finish_reason=f.out.finish_reason,
            )
            for i, f in enumerate(outputs)
        ]
        return ChatCompletion(
            id=rid,
            created=int(time.time()),
            model=self.state.model_name,
            choices=choices,
            usage=_usage(prompt_tokens, [f.out for f in outputs]),
        ).model_dump()

    async def stream(
        self, rid: str, first: tuple, rest: AsyncIterator, count: int, prompt_tokens: int,
        include_usage: bool,
    ) -> AsyncIterator[dict]:  # fmt: skip
        created, tok = int(time.time()), self.state.tokenizer

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> dict:
            c = ChatCompletionChunk(
                id=rid, created=created, model=self.state.model_name, choices=choices, usage=usage
            )
            return c.model_dump() if include_usage else c.model_dump(exclude={"usage"})

        for i in range(count):
            yield chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
        final: list[Any] = [None] * count
        async for index, out in _chain(first, rest):
            logprobs = chat_logprobs(tok, out.logprobs)
            if out.new_text or (logprobs and logprobs.content):
                delta = Delta(content=out.new_text)
                yield chunk([ChunkChoice(index=index, delta=delta, logprobs=logprobs)])
            if out.finished:
                final[index] = out
                yield chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=out.finish_reason)])  # fmt: skip
        if include_usage:
            yield chunk([], _usage(prompt_tokens, final))


class _TextFormat:
    prefix = "cmpl"

    def __init__(self, state: ServerState, body: CompletionRequest) -> None:
        self.state, self.echo = state, body.echo

    def _echo(self, out: Any) -> str:
        return self.state.tokenizer.decode(out.prompt_token_ids) if self.echo else ""

    def full(self, rid: str, outputs: list[_Final], prompt_tokens: int) -> dict:
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
            model=self.state.model_name,
            choices=choices,
            usage=_usage(prompt_tokens, [f.out for f in outputs]),
        ).model_dump()

    async def stream(
        self, rid: str, first: tuple, rest: AsyncIterator, count: int, prompt_tokens: int,
        include_usage: bool,
    ) -> AsyncIterator[dict]:  # fmt: skip
        created, tok = int(time.time()), self.state.tokenizer

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> dict:
            c = Completion(
                id=rid, created=created, model=self.state.model_name, choices=choices, usage=usage
            )
            return c.model_dump() if include_usage else c.model_dump(exclude={"usage"})

        final: list[Any] = [None] * count
        offsets = [0] * count
        async for index, out in _chain(first, rest):
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
            yield chunk([], _usage(prompt_tokens, final))


async def _chain(first: tuple, rest: AsyncIterator) -> AsyncIterator[tuple]:
    yield first
    async for item in rest:
        yield item
