"""The OpenAI-compatible HTTP API (FastAPI) over an `AsyncEngine`.

    GET  /                      the web chat page (static/chat.html)
    GET  /health                200 while the engine runs (+ request / token counters)
    GET  /metrics               Prometheus text format (`lmforge.serve.metrics`)
    GET  /v1/models             the base model and each LoRA adapter served
    POST /v1/completions        legacy completions (text or token-id prompts)
    POST /v1/chat/completions   chat completions (the tokenizer's chat template, tools)
    GET  /docs, /openapi.json   only with ``docs=True`` (``lmforge serve --docs``)

Both POST routes stream as server-sent events with ``"stream": true`` (``data: {json}``
chunks, then ``data: [DONE]``). Every error, including FastAPI's validation errors, an
unknown route, a too-large body and a wrong API key, is answered in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status; a 5xx means the
engine itself failed.

One request cannot stall the others: its size is bounded cheaply (characters, message
count) before anything is tokenized, and the chat template and tokenizer run in a worker
thread, so the event loop keeps answering ``/health`` and streaming tokens meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from lmforge.serve.async_engine import AsyncEngine, GenerationError
from lmforge.serve.errors import Guard, install_error_handlers
from lmforge.serve.formats import ChatFormat, FinalOutput, TextFormat, chain
from lmforge.serve.images import has_images, request_images
from lmforge.serve.metrics import ServerMetrics
from lmforge.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, error_body
from lmforge.serve.responses import ModelCard, ModelList
from lmforge.serve.translate import (
    ServerLimits,
    chat_prompt_ids,
    check_prompt_size,
    completion_prompt_ids,
    constraint_param,
    constraint_spec,
    generation_budget,
    prompt_char_bound,
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
    metrics: ServerMetrics
    adapters: dict[str, int] = field(default_factory=dict)  # served name → adapter index
    image_processor: Any = None  # a vision-language model's (`lmforge.serve.images`)


def create_app(
    engine: AsyncEngine,
    tokenizer: Any,
    model_name: str,
    limits: ServerLimits,
    api_key: str | None = None,
    *,
    adapters: Sequence[str] = (),
    allowed_hosts: Sequence[str] | None = None,
    docs: bool = False,
    image_processor: Any = None,
) -> FastAPI:
    """The API app. ``engine`` is started with the app and shut down with it; ``api_key``
    (when set) is required as ``Authorization: Bearer <key>`` on every ``/v1`` route.

    ``adapters`` names the LoRA adapters the engine carries (adapter i + 1 of its router):
    a request whose ``model`` is one of them is decoded with that adapter. ``allowed_hosts``
    (None: any) is what the ``Host`` header may name — a server without an API key on a
    loopback address accepts only its own names, against DNS rebinding. ``docs`` serves the
    OpenAPI schema (``/openapi.json``, ``/docs``). ``image_processor`` (a vision-language
    model's, `lmforge.serve.images.image_processor_for`) lets chat messages carry images."""
    limits = dataclasses.replace(
        limits,
        max_prompt_chars=limits.max_prompt_chars
        or prompt_char_bound(tokenizer, limits.max_model_len),
        max_messages=limits.max_messages or limits.max_model_len,
    )
    if model_name in adapters:
        raise ValueError(f"the adapter name {model_name!r} is the base model's name")
    state = ServerState(
        engine, tokenizer, model_name, limits, int(time.time()), ServerMetrics(engine),
        {name: i + 1 for i, name in enumerate(adapters)}, image_processor,
    )  # fmt: skip

    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.shutdown()

    app = FastAPI(
        title="lmforge",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
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

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> dict:
        cards = [
            ModelCard(id=name, created=state.created, max_model_len=limits.max_model_len)
            for name in [model_name, *adapters]
        ]
        return ModelList(data=cards).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        arrived = time.perf_counter()
        adapter = _check_model(state, body.model)
        tools = body.tools if body.tool_mode is not None else None
        texts = [m.text() for m in body.messages]
        texts += [json.dumps(t.model_dump(exclude_none=True)) for t in tools or []]
        check_prompt_size(texts, len(body.messages), limits, "messages")
        messages, images = body.messages, None
        if has_images(messages):  # decoded off the loop; placeholders expanded in the text
            messages, images = await asyncio.to_thread(
                request_images, state.image_processor, messages, limits
            )
        prompt = await asyncio.to_thread(chat_prompt_ids, tokenizer, messages, tools)
        fmt = ChatFormat(state, body.model, body.tool_mode)
        return await _complete(
            state, request, body, [prompt], "messages", fmt, adapter, arrived, images
        )

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        arrived = time.perf_counter()
        adapter = _check_model(state, body.model)
        prompt = body.prompt
        many = isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], int)
        items = prompt if many else [prompt]
        check_prompt_size([p for p in items if isinstance(p, str)], len(items), limits, "prompt")
        for p in items:  # token ids: the length alone decides
            if isinstance(p, list) and len(p) >= limits.max_model_len:
                generation_budget(len(p), None, limits, "prompt")
        prompts = await asyncio.to_thread(completion_prompt_ids, tokenizer, body.prompt)
        fmt = TextFormat(state, body)
        return await _complete(state, request, body, prompts, "prompt", fmt, adapter, arrived)

    # Outermost: refuse foreign hosts, wrong keys and oversized bodies before any parsing.
    app.add_middleware(
        Guard, api_key=api_key, max_bytes=limits.max_request_bytes, allowed_hosts=allowed_hosts
    )
    return app


def _check_model(state: ServerState, name: str) -> int:
    """The adapter index for the requested model (0: the base model)."""
    if name == state.model_name:
        return 0
    if name in state.adapters:
        return state.adapters[name]
    served = ", ".join(f"`{n}`" for n in [state.model_name, *state.adapters])
    raise APIError(
        f"The model `{name}` does not exist; this server serves {served}.",
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
    fmt: ChatFormat | TextFormat,
    adapter: int = 0,
    arrived: float | None = None,
    images: Any = None,
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
            jobs.append((prompt, params, adapter) if images is None else
                        (prompt, params, adapter, images))  # fmt: skip
    stream = state.engine.generate(jobs)
    try:  # the first step surfaces the engine's verdict on the request as a 4xx
        first = await anext(stream)
    except ValueError as exc:
        raise APIError(str(exc)) from exc
    prompt_tokens = sum(len(job[0]) for job in jobs[:: body.n])
    if arrived is not None:
        state.metrics.first_token(time.perf_counter() - arrived, prompt_tokens)
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

    param = constraint_param(body)
    try:
        return [
            await asyncio.to_thread(compile_constraint, tokenizer, **spec) for _ in range(count)
        ]
    except (ValueError, TypeError, RuntimeError) as exc:  # grammar engines raise all three
        raise APIError(f"invalid {param}: {exc}", param=param) from exc


async def _collect(first: tuple, stream: AsyncIterator, count: int) -> list[FinalOutput]:
    """Every choice's last output, with the logprobs of all its steps gathered."""
    final = [FinalOutput() for _ in range(count)]
    async for index, out in chain(first, stream):
        final[index].out = out
        if out.logprobs is not None:
            final[index].logprobs = (final[index].logprobs or []) + list(out.logprobs)
    return final


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
