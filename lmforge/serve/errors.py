"""What stands between the network and the API: OpenAI-shaped errors for everything that
can go wrong (FastAPI's validation errors, unknown routes, engine failures), and a guard
middleware that checks the Host header (DNS rebinding), the API key and the size of the
request body before anything is parsed."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.serve.async_engine import EngineDeadError, GenerationError
from lmforge.serve.protocol import APIError, error_body

log = logging.getLogger("lmforge.serve")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape (5xx only when the engine itself failed)."""

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


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts_for(
    host: str, api_key: str | None, extra: Sequence[str] = ()
) -> list[str] | None:
    """Host names a server bound to ``host`` answers (None: any). Without an API key it
    answers only the address it is bound to (plus the loopback names, and ``extra``): a web
    page whose domain was rebound to that address (DNS rebinding) sends its own name in
    ``Host`` and is refused. With a key, or bound to every interface (``0.0.0.0``, ``::``)
    — exposed on purpose — it answers any name."""
    if api_key is not None:
        return None
    bare = host.lower().strip("[]")
    try:
        if ipaddress.ip_address(bare).is_unspecified:
            return None
    except ValueError:
        pass
    return sorted({*LOOPBACK_NAMES, bare, *(h.lower().strip("[]") for h in extra)})


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without the port (``[::1]:8000`` → ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """Pure ASGI middleware: the Host header, the API key on ``/v1`` routes, and the
    request body size."""

    def __init__(
        self,
        app: Callable,
        api_key: str | None,
        max_bytes: int,
        allowed_hosts: Sequence[str] | None = None,
    ) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed_hosts is not None:
            host = host_name(headers.get("host", ""))
            if host not in self.allowed_hosts:
                message = (
                    f"Host {host!r} is not served here (allowed: "
                    f"{', '.join(sorted(self.allowed_hosts))}); a server without an API key "
                    "answers only its own address, against DNS rebinding"
                )
                return await _send_json(send, 403, error_body(message, code="host_not_allowed"))
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
