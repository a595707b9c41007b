"""Drive one (not thread-safe) `Engine` from a background thread for many asyncio requests.

    HTTP handlers (event loop)                     engine thread
    ──────────────────────────                     ─────────────
    generate(requests) ── ("add", ...) ─▶ inbox ─▶ engine.add_request
          ▲                                        engine.step() ──▶ outputs
          └──── asyncio.Queue ◀── call_soon_threadsafe ─────────────┘
    (closed / cancelled) ── ("abort", id) ─▶ inbox ─▶ engine.abort

Only the engine thread touches the engine. Each call of `generate` owns one asyncio queue
that receives the outputs of all its sub-requests (``n`` choices, several prompts); when the
consumer stops early (client disconnect, cancellation) its unfinished sub-requests are
aborted, so their KV blocks are freed at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("lmforge.serve")


class GenerationError(RuntimeError):
    """Generation failed inside the engine (not the request's fault)."""


class EngineDeadError(GenerationError):
    """The engine thread has stopped; the server cannot generate."""


@dataclass
class _Sink:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    index: int  # the sub-request's position in its `generate` call


class AsyncEngine:
    """Thread-backed asyncio front of an `Engine` (see the module docstring)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._inbox: list[tuple] = []
        self._wake = threading.Condition()
        self._sinks: dict[str, _Sink] = {}  # engine thread only
        self._ids = itertools.count()
        self._stopping = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.num_generated_tokens = 0  # delivered to consumers (monitoring)
        self.stats: dict = {}  # the engine's `stats()` after the latest step (monitoring)
        # (time, num_generated_tokens) after each step, for the recent tokens/s.
        self.token_history: collections.deque = collections.deque(maxlen=4096)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def num_running(self) -> int:
        """Requests in the engine that a consumer still waits on."""
        return len(self._sinks)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    # -- the asyncio side ---------------------------------------------------------------
    def tokens_per_second(self, window_s: float = 10.0) -> float:
        """Generated tokens per second over the last ``window_s`` seconds (0 when idle)."""
        now = time.monotonic()
        recent = [item for item in list(self.token_history) if now - item[0] <= window_s]
        if not recent:
            return 0.0
        return (self.num_generated_tokens - recent[0][1]) / max(now - recent[0][0], 1e-3)

    async def generate(self, requests: Sequence[tuple]) -> AsyncIterator[tuple[int, Any]]:
        """Run ``requests`` (``(prompt_token_ids, SamplingParams)`` pairs, or triples with a
        LoRA adapter index, or quadruples with a vision-language model's
        `lmforge.infer.multimodal.ImageInputs` after it) concurrently and yield
        ``(index, RequestOutput)`` as each step produces them, until all are finished.

        An invalid request raises the engine's error (``ValueError`` from ``add_request``)
        here; leaving the loop early aborts the sub-requests still running.
        """
        if not self.is_running:
            raise EngineDeadError(f"the engine is not running: {self._error!r}")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        ids = [f"req-{next(self._ids)}" for _ in requests]
        unfinished = set(ids)
        self._post(
            *(("add", rid, list(r[0]), r[1], _Sink(loop, queue, i), r[2] if len(r) > 2 else 0,
               r[3] if len(r) > 3 else None) for i, (rid, r) in enumerate(zip(ids, requests)))
        )  # fmt: skip
        try:
            while unfinished:
                batch = await queue.get()
                if isinstance(batch, BaseException):
                    raise batch
                for index, out in batch:
                    if out.finished:
                        unfinished.discard(ids[index])
                    yield index, out
        finally:
            if unfinished:
                self._post(*(("abort", rid) for rid in unfinished))

    def _post(self, *commands: tuple) -> None:
        with self._wake:
            self._inbox.extend(commands)
            self._wake.notify()

    # -- the engine thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._loop_once():
                    pass
        except BaseException as exc:  # not a step failure: the loop itself broke; stop for good
            log.exception("engine thread failed")
            self._error = exc
            self._fail_all(EngineDeadError(f"the engine thread failed: {exc!r}"))
            with self._wake:
                for command in self._inbox:
                    if command[0] == "add":
                        _deliver(command[4], EngineDeadError(f"the engine failed: {exc!r}"))
                self._inbox.clear()

    def _fail_all(self, error: BaseException) -> None:
        """Tell every live request ``error`` and drop them from the engine."""
        for rid, sink in list(self._sinks.items()):
            _deliver(sink, error)
            with contextlib.suppress(Exception):
                self.engine.abort(rid)
        self._sinks.clear()

    def _loop_once(self) -> bool:
        with self._wake:
            while not self._inbox and not self._stopping and not self.engine.has_unfinished():
                self._wake.wait()
            if self._stopping:
                return False
            commands, self._inbox = self._inbox, []
        for command in commands:
            if command[0] == "add":
                _, rid, prompt, params, sink, adapter, images = command
                extra = {} if images is None else {"images": images}
                try:
                    if adapter:
                        extra["adapter"] = adapter
                    self.engine.add_request(prompt, params, request_id=rid, **extra)
                except Exception as exc:  # this request's problem; the engine is untouched
                    if not isinstance(exc, ValueError):  # reported as a 400 all the same
                        exc = ValueError(f"invalid request: {exc}")
                    _deliver(sink, exc)
                    continue
                self._sinks[rid] = sink
            elif self._sinks.pop(command[1], None) is not None:
                self.engine.abort(command[1])
        if not self.engine.has_unfinished():
            self._publish_stats()
            return True
        try:
            outputs = self.engine.step()
        except Exception as exc:  # the requests in this step fail; the server lives on
            log.exception("engine step failed")
            self._fail_all(GenerationError(f"generation failed: {exc!r}"))
            return True
        per_queue: dict[int, tuple[_Sink, list]] = {}
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is None:  # aborted by us meanwhile
                continue
            if out.finished:
                del self._sinks[out.request_id]
            self.num_generated_tokens += len(out.new_token_ids)
            per_queue.setdefault(id(sink.queue), (sink, []))[1].append((sink.index, out))
        for sink, batch in per_queue.values():
            _deliver(sink, batch)
        self._publish_stats()
        return True

    def _publish_stats(self) -> None:
        self.token_history.append((time.monotonic(), self.num_generated_tokens))
        stats = getattr(self.engine, "stats", None)
        if stats is not None:
            with contextlib.suppress(Exception):  # monitoring never breaks generation
                self.stats = stats()


def _deliver(sink: _Sink, item: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the consumer's loop has closed; it aborts
        sink.loop.call_soon_threadsafe(sink.queue.put_nowait, item)
