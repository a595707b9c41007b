"""The OpenAI API requests, as validated pydantic models, and the error shape (the response
models are in `lmforge.serve.responses`).

Requests follow https://platform.openai.com/docs/api-reference (chat completions, legacy
completions, tool calling); fields we do not implement are refused with a 400 that names them
rather than silently ignored. A few vLLM-style extensions are accepted (``top_k``, ``min_p``,
``repetition_penalty``, ``ignore_eos``, ``guided_regex``, ``guided_grammar``).

Types are checked strictly, as OpenAI does (``"stream": "yes"`` or ``"max_tokens": "5"`` are
400s, not coerced), numbers are finite and bounded, and no string anywhere in a request may
hold a lone UTF-16 surrogate (``"a\\ud800b"``: it cannot be encoded, so it would fail later).

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1000  # per stop string
MAX_TOP_LOGPROBS = 20
MAX_TOP_K = 1 << 20  # beyond any vocabulary
MAX_REPETITION_PENALTY = 10.0
MAX_TOOLS = 128


class APIError(Exception):
    """An error answered in OpenAI's shape with HTTP ``status``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = (
            message,
            status,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---------------------------------------------------------------------- requests
class _Strict(BaseModel):
    # Unknown fields are errors (OpenAI answers "Unrecognized request argument supplied");
    # no type coercion ("yes" is not a bool, "5" not an int); no NaN or infinity.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def unencodable_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string in ``value`` (nested dicts / lists, keys too)
    that UTF-8 cannot encode (a lone surrogate), or None."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(item, dict):
            stack.extend((f"{where}.{k}" if where else str(k), k) for k in item)
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}.{i}" if where else str(i), v) for i, v in enumerate(item))
    return None


class _Request(_Strict):
    """A top-level request body: refuses lone surrogates anywhere before field checks."""

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data: Any) -> Any:
        where = unencodable_path(data)
        if where is not None:
            raise ValueError(
                f"{where}: the text holds a lone UTF-16 surrogate (not valid Unicode text)"
            )
        return data


class StreamOptions(_Strict):
    include_usage: bool = False


class JSONSchemaFormat(_Strict):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | bool = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True
    )


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a "json_schema" object')
        return self


class _SamplingRequest(_Request):
    """Fields shared by chat and legacy completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = Field(None, ge=0, lt=2**63)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions (vLLM's names).
    top_k: int = Field(0, ge=-1, le=MAX_TOP_K)  # 0 and -1 (vLLM): off
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=MAX_REPETITION_PENALTY)
    ignore_eos: bool = False
    guided_regex: str | None = None
    guided_grammar: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop sequences may have at most {MAX_STOP_CHARS} characters")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> None:
        if value:
            raise ValueError("logit_bias is not supported by this server")
        return None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.guided_regex is not None and self.guided_grammar is not None:
            raise ValueError("give at most one of guided_regex and guided_grammar")
        return self


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str  # a data: URL (remote URLs are refused by `lmforge.serve.images`)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    """An image in a user message (OpenAI's ``image_url`` content part)."""

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant turns that called tools
    tool_call_id: str | None = None  # tool turns: which call this answers

    @model_validator(mode="after")
    def _check_roles(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls are only allowed on assistant messages")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError('a "tool" message needs the tool_call_id it answers')
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


class FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema; None: no arguments
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: ToolChoiceFunction


class ChatCompletionRequest(_SamplingRequest):
    """``tool_choice`` (OpenAI): "none" (no calls; tools not shown), "auto" (the default when
    tools are given: text or calls), "required" (at least one call) or a named function."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Accepted and ignored: they change nothing in what a local server returns.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        if isinstance(self.tool_choice, NamedToolChoice):
            if self.tool_choice.function.name not in names:
                raise ValueError(
                    f"tool_choice names the function `{self.tool_choice.function.name}`, "
                    "which is not in tools"
                )
        elif self.tool_choice == "required" and not names:
            raise ValueError('tool_choice "required" needs tools')
        if (self.tools or self.tool_choice not in (None, "none")) and (
            self.response_format is not None
            or self.guided_regex is not None
            or self.guided_grammar is not None
        ):
            raise ValueError("tools cannot be combined with response_format or guided_*")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; give one")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def tool_mode(self) -> str | None:
        """None (no tools in play), "auto", "required", or the name of the forced function."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            return "function:" + self.tool_choice.function.name
        return self.tool_choice or "auto"

    @property
    def num_logprobs(self) -> int | None:
        """The engine's ``logprobs``: None (off), 0 (sampled token only) or top-k."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported by this server")
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported by this server")
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs (prompt logprobs) is not supported")
        if isinstance(self.prompt, list) and len(self.prompt) == 0:
            raise ValueError("prompt must not be empty")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs
