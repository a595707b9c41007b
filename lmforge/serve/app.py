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
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.serve.async_engine import AsyncEngine, EngineDeadError, GenerationError
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

log = logging.getLogger("lmforge.serve")
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
    _install_error_handlers(app)

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
    app.add_middleware(_Guard, api_key=api_key, max_bytes=limits.max_request_bytes)
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


# ---------------------------------------------------------------------- errors and guards
def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error_body(exc.errors()), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(message, code=code), exc.status_code)

    @app.exception_handler(EngineDeadError)
    async def engine_dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "server_error"), 503)

    @app.exception_handler(GenerationError)
    async def generation_failed(request: Request, exc: GenerationError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "server_error"), 500)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {exc!r}", "server_error"), 500)


def validation_error_body(errors: list[dict]) -> dict:
    """FastAPI/pydantic validation errors as one OpenAI error; ``param`` is the first bad
    field's dotted path (``messages.0.role``)."""
    parts, params = [], []
    for err in errors[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # Union members add their type name to the path (``str``, ``list[int]``); drop them.
        loc = [x for x in loc if not (x[:1].islower() and ("[" in x or x in _TYPE_NAMES))]
        if err.get("type") == "json_invalid":
            parts.append(f"the request body is not valid JSON: {err.get('msg')}")
            continue
        if err.get("type") == "missing" and not loc:
            parts.append("the request body must be a JSON object")
            continue
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
        if loc:
            params.append(".".join(loc))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return error_body("; ".join(parts) + more, param=params[0] if params else None)


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none", "function-after"}


class _Guard:
    """Pure ASGI middleware: the API key on ``/v1`` routes, and the request body size."""

    def __init__(self, app: Callable, api_key: str | None, max_bytes: int) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and scope["path"].startswith("/v1"):
            given = headers.get("authorization", "")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                message = (
                    "Incorrect API key provided."
                    if token
                    else "You didn't provide an API key "
                    "(send it as the header 'Authorization: Bearer <key>')."
                )
                return await _send_json(send, 401, error_body(message, code="invalid_api_key"))
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(send, declared)
        chunks, size = [], 0
        while True:  # read the whole body (bounded), then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(send, str(size) + "+")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: wait for the disconnect

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable, size: str) -> None:
        message = f"request body of {size} bytes is over this server's limit of {self.max_bytes}"
        await _send_json(send, 413, error_body(message, code="request_too_large"))


async def _send_json(send: Callable, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
