"""An OpenAI-compatible server (`lmforge serve`) and chat front ends (`lmforge chat`, a web
page at ``/``) over the inference engine.

>>> from lmforge.serve import AsyncEngine, ServerLimits, create_app
>>> app = create_app(AsyncEngine(engine), tokenizer, "my-model", ServerLimits(2048, 512))
"""

from lmforge.serve.app import create_app
from lmforge.serve.async_engine import AsyncEngine, EngineDeadError
from lmforge.serve.protocol import APIError, error_body
from lmforge.serve.translate import ServerLimits

__all__ = ["APIError", "AsyncEngine", "EngineDeadError", "ServerLimits", "create_app", "error_body"]
