"""An OpenAI-compatible server (`lmforge serve`) and chat front ends (`lmforge chat`, a web
page at ``/``) over the inference engine.

>>> from lmforge.serve import AsyncEngine, ServerLimits, create_app
>>> app = create_app(AsyncEngine(engine), tokenizer, "my-model", ServerLimits(2048, 512))

| module | what |
|---|---|
| `app` | the FastAPI app: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (SSE), ``/metrics``, the chat page |
| `protocol` | the OpenAI API requests as strictly validated pydantic models; the error shape |
| `responses` | the OpenAI API responses as pydantic models (tool calls and stream chunks included) |
| `translate` | OpenAI requests → prompt ids + `SamplingParams` (cheap size bounds first); logprobs |
| `images` | images in chat requests: ``image_url`` data URLs → processed images + expanded placeholders (4xx rules) |
| `formats` | engine outputs → OpenAI responses, whole or streamed (tool calls parsed out) |
| `tools` | tool calling: tools into the prompt, the grammar that keeps calls valid, calls parsed back |
| `metrics` | ``/metrics`` in the Prometheus text format (running / waiting, tokens/s, TTFT, KV cache) |
| `async_engine` | one engine driven from a background thread for many asyncio requests |
| `errors` | OpenAI-shaped 4xx errors for everything that goes wrong before the engine |
| `loading` | a checkpoint folder (+ LoRA adapters, merged or per request) → `Engine`, tokenizer, context length |
| `terminal_chat` | the multi-turn terminal chat loop of ``lmforge chat`` |
"""

from lmforge.serve.app import create_app
from lmforge.serve.async_engine import AsyncEngine, EngineDeadError
from lmforge.serve.protocol import APIError, error_body
from lmforge.serve.translate import ServerLimits

__all__ = ["APIError", "AsyncEngine", "EngineDeadError", "ServerLimits", "create_app", "error_body"]
